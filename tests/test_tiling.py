"""Large scenes in tiles: grid, merge across seams, empty tiles, nodata."""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import Executor, Future

import numpy as np
import pytest
import rasterio
from helpers import EchoPrompter
from rasterio.transform import from_origin

from diffuprompter_plugin.engine.config import DiffuPrompterConfig
from diffuprompter_plugin.engine.crf_pool import InlineExecutor
from diffuprompter_plugin.engine.grounding import Grounded
from diffuprompter_plugin.engine.heatmap_store import (
    HEATMAP_SCALE,
    HeatmapWriter,
    dequantize_heatmap,
    heatmap_preview,
    quantize_heatmap,
    read_heatmap_window,
)
from diffuprompter_plugin.engine.pipeline import DiffuPrompter
from diffuprompter_plugin.engine.raster import ArrayRaster, decimated_shape
from diffuprompter_plugin.engine.scenes import segment_scene
from diffuprompter_plugin.engine.segmentation import Instance
from diffuprompter_plugin.engine.signals import Signals, merged_signals
from diffuprompter_plugin.engine.tiles import merge_instances, tile_grid

TILED = DiffuPrompterConfig(crf=False, tile_size=64, tile_overlap=16)


SPREAD = 0.1
"""The stub's draws' spread, relative to its heatmap: draw_agreement 0.9."""


class RedGrounder:
    """Stub SD stage: the raw attention of a tile is its red channel / 255;
    the heatmap is its min-max normalisation (as Eq. 4), the peak its max,
    the draws' spread :data:`SPREAD` times the heatmap."""

    def __init__(self) -> None:
        self.tiles = 0

    def check_prompts(self, names):
        pass

    def ground(self, rgb, names, progress=False):
        (grounded,) = self.tile_heatmaps([rgb], names)
        return grounded

    def tile_heatmaps(self, images, names, progress=False):
        for rgb in images:
            self.tiles += 1
            raw = rgb[..., 0].astype(np.float32) / 255
            span = raw.max() - raw.min()
            heat = (raw - raw.min()) / span if span else np.zeros_like(raw)
            heatmaps = {name: heat.copy() for name in names}
            spreads = {name: SPREAD * heat for name in names}
            yield Grounded(heatmaps, spreads, dict.fromkeys(names, float(raw.max())))


def stub_model(config: DiffuPrompterConfig) -> DiffuPrompter:
    return DiffuPrompter(RedGrounder(), EchoPrompter(config), config)


OBJECTS = {
    "seam": (40, 10, 60, 30),  # straddles the first vertical seam
    "corner": (40, 40, 60, 62),  # on the corner of four tiles
    "overlap": (100, 5, 108, 15),  # inside the overlap of two columns of tiles
    "long": (20, 100, 150, 112),  # spans three tiles
    "inside": (170, 150, 185, 170),  # inside one tile
}


def scene() -> np.ndarray:
    """200 x 210 px: faint noise, bright objects in the red channel."""
    rgb = np.random.default_rng(0).integers(5, 20, (200, 210, 3)).astype(np.uint8)
    for x0, y0, x1, y1 in OBJECTS.values():
        rgb[y0:y1, x0:x1, 0] = 230
    return rgb


def object_mask(box, shape=(200, 210)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[box[1] : box[3], box[0] : box[2]] = True
    return mask


def test_grid_covers_the_image_and_cores_partition_it():
    grid = tile_grid(200, 210, 64, 16)
    cover = np.zeros((200, 210), int)
    cores = np.zeros((200, 210), int)
    for (x0, y0, x1, y1), (cx0, cy0, cx1, cy1) in grid:
        assert (x1 - x0, y1 - y0) == (64, 64)
        assert x0 <= cx0 < cx1 <= x1 and y0 <= cy0 < cy1 <= y1
        cover[y0:y1, x0:x1] += 1
        cores[cy0:cy1, cx0:cx1] += 1
    assert cover.min() >= 1 and (cores == 1).all()
    assert [t for t, _ in grid][:2] == [(0, 0, 64, 64), (48, 0, 112, 64)]
    assert tile_grid(40, 50, 64, 16) == [((0, 0, 50, 40), (0, 0, 50, 40))]


def test_each_object_comes_out_once_with_its_pixels_unchanged():
    result = stub_model(TILED).annotate(scene(), ["car"])
    masks = sorted((i.box, i.full_mask((200, 210))) for i in result.instances)
    assert [box for box, _ in masks] == sorted(OBJECTS.values())
    for box, mask in masks:
        np.testing.assert_array_equal(mask, object_mask(box))
    assert set(result.heatmap_files) == {"car"}
    stored = read_heatmap_window(result.heatmap_files["car"])
    assert stored.shape == (200, 210)
    assert (stored > 0.4).sum() == sum(object_mask(b).sum() for b in OBJECTS.values())


def test_tiled_instances_equal_the_untiled_ones():
    whole = stub_model(TILED.replace(tile_size=256, tile_overlap=16)).annotate(scene(), ["car"])
    tiled = stub_model(TILED).annotate(scene(), ["car"])
    assert whole.heatmap_files == {}  # a small image: as before, in memory
    assert whole.heatmaps["car"].shape == (200, 210)

    def key(result):
        return sorted((i.box, i.mask.tobytes()) for i in result.instances)

    assert key(tiled) == key(whole)


def test_empty_tiles_are_scaled_below_gamma_not_normalised_to_foreground():
    rgb = scene()
    rgb[..., 0] = np.random.default_rng(1).integers(5, 20, rgb.shape[:2])  # noise only
    rgb[150:170, 170:185, 0] = 230  # one object
    result = stub_model(TILED).annotate(rgb, ["car"])
    assert [i.box for i in result.instances] == [(170, 150, 185, 170)]
    stored = read_heatmap_window(result.heatmap_files["car"], (0, 0, 100, 100))
    assert stored.max() < 20 / 230  # noise tile: its peak over the scene's


def test_rethreshold_of_a_scene_gives_exactly_the_run_from_the_stored_heatmaps():
    model = stub_model(TILED)
    result = model.annotate(scene(), ["car"])
    again = segment_scene(
        model.sam_prompter,
        ArrayRaster(scene()),
        result.heatmap_files,
        spread_paths=result.spread_files,
    )

    def key(instances):
        return sorted((i.box, i.mask.tobytes(), i.score, i.signals) for i in instances)

    assert key(again) == key(result.instances)
    for inst in result.instances:  # the spreads were scaled per tile with the heatmaps
        assert inst.signals.draw_agreement == pytest.approx(1 - SPREAD, abs=1e-3)
        assert inst.signals.heat_contrast > 0.5 and inst.signals.quality > 0.5


def test_an_object_merged_across_a_seam_has_the_area_weighted_signals_of_its_parts():
    left_tile, right_tile = (0, 0, 64, 64), (48, 0, 112, 64)
    a, b = Signals(0.9, 0.8, 1.0, 0.6, 1.0), Signals(0.7, 0.6, 0.9, 0.4, 0.8)
    left = Instance("car", np.ones((10, 24), bool), (40, 10, 64, 20), 0.5, a)  # cut by its edge
    right = Instance("car", np.ones((10, 12), bool), (50, 10, 62, 20), 0.7, b)
    (merged,) = merge_instances([(left_tile, [left]), (right_tile, [right])])
    assert merged.box == (40, 10, 64, 20) and merged.score == 0.7
    assert merged.signals == merged_signals([(a, 240), (b, 120)])
    assert merged.signals.sam_iou == pytest.approx((0.9 * 240 + 0.7 * 120) / 360)


def test_16bit_four_band_geotiff_with_nodata(tmp_path):
    path = tmp_path / "scene.tif"
    data = np.random.default_rng(2).integers(200, 400, (4, 160, 200)).astype(np.uint16)
    data[:, :, :70] = 0  # nodata: the left 70 columns
    data[0, 40:60, 60:90] = 4000  # an object half on nodata
    data[0, 100:120, 120:150] = 4000  # an object on data
    transform = from_origin(500000, 5000000, 0.5, 0.5)
    profile = dict(driver="GTiff", width=200, height=160, count=4, dtype="uint16", nodata=0)
    with rasterio.open(path, "w", crs="EPSG:32633", transform=transform, **profile) as dst:
        dst.write(data)
    model = stub_model(TILED)
    result = model.annotate(path, ["car"])
    assert model.grounder.tiles == 12 - 3  # the column of tiles entirely nodata is not run
    boxes = sorted(i.box for i in result.instances)
    assert boxes == [(70, 40, 90, 60), (120, 100, 150, 120)]  # none on nodata
    with rasterio.open(result.heatmap_files["car"]) as src:
        assert src.crs.to_epsg() == 32633 and src.transform == transform
        assert src.read(1)[:, :70].max() == 0


def test_elongated_strip_is_labelled_in_tiles():
    strip = np.full((16, 5000, 3), 10, np.uint8)
    strip[2:14, 2000:2030, 0] = 230
    result = stub_model(DiffuPrompterConfig(crf=False, min_area=16)).annotate(strip, ["car"])
    assert [i.box for i in result.instances] == [(2000, 2, 2030, 14)]


def test_sam_refuses_an_image_too_elongated_for_it_naming_its_size():
    from segment_anything.utils.transforms import ResizeLongestSide

    from diffuprompter_plugin.engine.errors import InputImageError

    prompter = EchoPrompter(DiffuPrompterConfig(crf=False))
    prompter.predictor.transform = ResizeLongestSide(64)  # a tiny SAM
    with pytest.raises(InputImageError, match="5000x16 px is too elongated"):
        prompter.set_image(np.zeros((16, 5000, 3), np.uint8))


def test_a_scene_in_a_brain_run_stores_previews_and_geotiffs_and_rethresholds_exactly(
    tmp_path,
):
    import fiftyone as fo
    from PIL import Image

    from diffuprompter_plugin.labelling import compute_pseudo_labels
    from diffuprompter_plugin.rethreshold import rethreshold_pseudo_labels

    Image.fromarray(scene()).save(tmp_path / "scene.png")
    dataset = fo.Dataset()
    dataset.add_sample(fo.Sample(filepath=str(tmp_path / "scene.png")))
    model = stub_model(TILED)
    compute_pseudo_labels(dataset, "dp", classes=["car"], model=model)
    sample = dataset.first()
    heatmap = sample["dp_heatmap_car"]
    assert heatmap.get_map().shape == (200, 210)  # preview: the scene is under PREVIEW_SIDE
    with rasterio.open(heatmap["geotiff_path"]) as src:
        assert (src.height, src.width) == (200, 210)
    boxes = sorted(
        tuple(round(v * s) for v, s in zip(d.bounding_box, (210, 200, 210, 200), strict=True))
        for d in sample.dp_instances.detections
    )
    assert boxes == sorted((x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in OBJECTS.values())
    assert heatmap["spread_path"].endswith("_spread.tif")
    rethreshold_pseudo_labels(dataset, "dp", "dp_again", prompter=model.sam_prompter)
    sample.reload()

    def stored(detections):
        signals = ("sam_iou", "region_iou", "stability", "heat_contrast", "draw_agreement")
        return sorted(
            (d.bounding_box, d.mask.tobytes(), *(d[s] for s in (*signals, "quality")))
            for d in detections
        )

    assert stored(sample.dp_again.detections) == stored(sample.dp_instances.detections)
    assert (
        sample.dp_again_quality
        == sample.dp_instances_quality
        == min(d.quality for d in sample.dp_instances.detections)
    )

    # the run's tile_size says the sample is a scene: no fallback to the preview
    sample["dp_heatmap_car"] = fo.Heatmap(map_path=heatmap.map_path)
    sample.save()
    out = rethreshold_pseudo_labels(dataset, "dp", "dp_third", prompter=model.sam_prompter)
    assert (
        "whose heatmaps of ['car'] have no full-resolution GeoTIFF" in out["failures"][sample.id]
    )
    assert dataset.first()["dp_third"] is None


def test_heatmap_quantisation_round_trips_within_half_a_step():
    heat = np.array([[-0.5, 0.0, 1e-6, 0.3], [0.5, 0.999999, 1.0, 2.0]], np.float32)
    stored = quantize_heatmap(heat)
    assert stored.dtype == np.uint16
    assert stored.tolist() == [[0, 0, 0, 19660], [32768, 65535, 65535, 65535]]
    back = dequantize_heatmap(stored)
    assert back.dtype == np.float32
    assert np.abs(back - heat.clip(0, 1)).max() <= 0.5 / HEATMAP_SCALE + 1e-7


@pytest.mark.parametrize(
    ("shape", "side", "decimated"),
    [((100, 60), 200, (100, 60)), ((3000, 1000), 300, (300, 100)), ((5000, 3), 100, (100, 1))],
)
def test_decimated_reads_keep_aspect_and_never_enlarge(shape, side, decimated):
    assert decimated_shape(*shape, side) == decimated


def test_heatmap_preview_has_the_decimated_shape_and_the_stored_values(tmp_path):
    path = str(tmp_path / "heat.tif")
    heat = np.tile(np.linspace(0, 1, 300, dtype=np.float32), (90, 1))
    writer = HeatmapWriter({"ship": path}, heat.shape)
    writer.write("ship", (0, 0, 300, 90), heat)
    writer.close()
    preview = heatmap_preview(path, 100)
    assert preview.shape == decimated_shape(90, 300, 100) == (30, 100)
    np.testing.assert_allclose(preview, heat.reshape(30, 3, 100, 3).mean((1, 3)), atol=1e-4)
    np.testing.assert_allclose(read_heatmap_window(path), heat, atol=0.5 / HEATMAP_SCALE)


def test_overviews_go_only_to_the_files_named(tmp_path):
    paths = {name: str(tmp_path / f"{name}.tif") for name in ("heat", "spread")}
    writer = HeatmapWriter(paths, (1100, 1100))
    for name in paths:
        writer.write(name, (0, 0, 1100, 1100), np.full((1100, 1100), 0.5, np.float32))
    writer.close(overviews={"heat"})
    with rasterio.open(paths["heat"]) as heat, rasterio.open(paths["spread"]) as spread:
        assert heat.overviews(1) == [2, 4] and spread.overviews(1) == []


class CountingPool:
    """The stream's CRF pool (inline with 0 workers), logging its start
    ("pool", workers) and each task ("crf", tile shape), beside the SAM
    stage of each tile ("sam", tile box)."""

    def __init__(self, workers: int, log: list) -> None:
        from diffuprompter_plugin.engine.crf_pool import crf_pool

        self.pool, self.log = crf_pool(workers), log
        log.append(("pool", workers))

    def __enter__(self):
        self.pool.__enter__()
        return self

    def __exit__(self, *exc):
        return self.pool.__exit__(*exc)

    def submit(self, fn, *args):
        self.log.append(("crf", args[0].shape[:2]))
        return self.pool.submit(fn, *args)


def _key(result):
    return sorted((i.label, i.box, i.mask.tobytes(), i.score) for i in result.instances)


def test_a_scene_through_the_crf_pool_equals_the_inline_path(monkeypatch):
    """Objects across seams, on a corner of four tiles and in overlaps; with
    DenseCRF on, in a stream of scenes, an image labelled whole and a
    missing file."""
    import diffuprompter_plugin.engine.pipeline as pipeline
    from diffuprompter_plugin.engine.scenes import tile_instances

    log: list = []
    monkeypatch.setattr(pipeline, "crf_pool", lambda n: CountingPool(n, log))
    monkeypatch.setattr(
        pipeline,
        "tile_instances",
        lambda prompter, work, binaries: (
            log.append(("sam", work.tile)) or tile_instances(prompter, work, binaries)
        ),
    )
    config = TILED.replace(crf=True)
    small = scene()[:60, :60].copy()
    flipped = scene()[::-1].copy()
    items = [(0, scene(), ["car"]), (1, small, ["car"]), (2, "missing.png", ["car"])]
    items.append((3, flipped, ["car"]))
    inline = list(stub_model(config).annotate_all(items))
    inline_log, log[:] = log[:], []
    pooled = list(stub_model(config.replace(crf_workers=2)).annotate_all(items))
    assert [k for k, _ in pooled] == [0, 1, 2, 3]
    assert "missing.png" in str(pooled[2][1]) and "missing.png" in str(inline[2][1])
    grid = tile_grid(200, 210, 64, 16)
    with_foreground = sum(  # tiles with a pixel above gamma, in both scenes
        read_heatmap_window(inline[k][1].heatmap_files["car"], tile).max() > config.threshold
        for k in (0, 3)
        for tile, _ in grid
    )
    assert 0 < with_foreground < 2 * len(grid)
    for workers, events in ((0, inline_log), (2, log)):
        assert events[0] == ("pool", workers)  # one pool for the whole stream
        crf = [entry for entry in events if entry[0] == "crf"]
        assert crf.count(("crf", (64, 64))) == with_foreground  # the others skip DenseCRF
        assert crf.count(("crf", (60, 60))) == 1  # the image labelled whole
        # memory holds a few tiles: TILES_PER_PROCESS per worker in flight (and
        # one grounded tile per open item, waiting for room)
        outstanding, peak = 0, 0
        for kind, _ in events[1:]:
            outstanding += 1 if kind == "crf" else -1
            peak = max(peak, outstanding)
        assert peak == max(1, pipeline.TILES_PER_PROCESS * workers) < with_foreground
    for key in (0, 1, 3):
        assert _key(pooled[key][1]) == _key(inline[key][1])
        np.testing.assert_array_equal(
            pooled[key][1].heatmaps["car"], inline[key][1].heatmaps["car"]
        )
    boxes = sorted(i.box for i in pooled[0][1].instances)
    assert len(boxes) == len(OBJECTS)  # each object once, seams and corners merged
    for name in ("seam", "corner", "long"):
        x0, y0, x1, y1 = OBJECTS[name]
        assert any(
            b[0] <= x0 + 2 and b[2] >= x1 - 2 and b[1] <= y0 + 2 and b[3] >= y1 - 2 for b in boxes
        ), name


class LateFuture(Future):
    """A task's result, delivered when the grounder next runs (the CRF came
    back while the models worked) or when the stream waits for it."""

    def __init__(self, value) -> None:
        super().__init__()
        self.value = value

    def deliver(self) -> None:
        if not self.done():
            self.set_result(self.value)

    def result(self, timeout=None):
        self.deliver()
        return super().result(timeout)


class LatePool(Executor):
    def __init__(self) -> None:
        self.futures: list[LateFuture] = []

    def submit(self, fn, /, *args, **kwargs):
        self.futures.append(LateFuture(fn(*args, **kwargs)))
        return self.futures[-1]


def test_the_next_scene_is_grounded_while_the_pool_refines_the_last_ones_tiles(
    monkeypatch,
):
    import diffuprompter_plugin.engine.pipeline as pipeline

    pool, log = LatePool(), []
    monkeypatch.setattr(pipeline, "crf_pool", lambda n: pool)
    model = stub_model(TILED.replace(crf=True, crf_workers=2))  # one tile per group (L=50)
    grounder = model.grounder
    ground = grounder.tile_heatmaps

    def tile_heatmaps(images, names, progress=False):
        for future in pool.futures:
            future.deliver()
        log.append("ground")
        return ground(images, names, progress)

    grounder.tile_heatmaps = tile_heatmaps
    sam = pipeline.tile_instances
    monkeypatch.setattr(pipeline, "tile_instances", lambda *a: log.append("sam") or sam(*a))

    def items():  # taken from the caller (a run's claims) only when needed
        for key in "AB":
            log.append(f"take {key}")
            yield key, scene(), ["car"]

    for key, _ in model.annotate_all(items()):
        log.append(key)
    grounded = [k for k, event in enumerate(log) if event == "ground"]
    assert len(grounded) == 2 * len(tile_grid(200, 210, 64, 16))
    b_first, a_out = grounded[len(grounded) // 2], log.index("A")
    assert grounded[len(grounded) // 2 - 1] < log.index("take B") < b_first  # A grounded first
    # A's tiles fill the pool, and B is grounded while they are in it: no SAM
    # of A before B's first group, and A comes out while B is grounded
    assert "sam" not in log[:b_first] and b_first < a_out < grounded[-1]
    # one group of B per pool-full of A's tiles (TILES_PER_PROCESS per worker)
    prompted = log[:a_out].count("sam")
    assert log[b_first:a_out].count("ground") == -(-prompted // (pipeline.TILES_PER_PROCESS * 2))
    assert log[-1] == "B"


class FailingPool(InlineExecutor):
    """Runs each task as it is submitted, counting them; the first fails."""

    def __init__(self) -> None:
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        if self.submitted == 1:
            future = Future()
            future.set_exception(ValueError("DenseCRF failed"))
            return future
        return super().submit(fn, *args, **kwargs)


def test_a_scene_whose_crf_fails_sends_no_more_tiles_to_the_pool(monkeypatch):
    import diffuprompter_plugin.engine.pipeline as pipeline

    pool = FailingPool()
    monkeypatch.setattr(pipeline, "crf_pool", lambda n: pool)
    model = stub_model(TILED.replace(crf=True, crf_workers=2))
    results = dict(model.annotate_all([("A", scene(), ["car"]), ("B", scene(), ["car"])]))
    assert isinstance(results["A"], ValueError) and "DenseCRF failed" in str(results["A"])
    with_foreground = pool.submitted - 1  # B's tiles; of A's, only the one that failed
    assert 1 < with_foreground < len(tile_grid(200, 210, 64, 16))
    inline = stub_model(TILED.replace(crf=True)).annotate(scene(), ["car"])
    assert pool.submitted - 1 == 2 * with_foreground  # the same tiles: B is whole
    assert _key(results["B"]) == _key(inline)


def test_stopping_while_the_next_scene_is_grounded_removes_its_files(tmp_path, monkeypatch):
    import diffuprompter_plugin.engine.pipeline as pipeline

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(pipeline, "crf_pool", lambda n: LatePool())
    model = stub_model(TILED.replace(crf=True, crf_workers=2))
    stream = model.annotate_all([("A", scene(), ["car"]), ("B", scene(), ["car"])])
    key, result = next(stream)  # A's result, while B is being grounded: both have files
    assert key == "A" and len(list(tmp_path.glob("dp-heatmaps-*"))) == 2
    stream.close()  # stopped in B's grounding: B's files go, A's are the caller's
    assert [os.path.dirname(p) for p in result.heatmap_files.values()] == [
        str(p) for p in tmp_path.iterdir()
    ]
    result.discard()  # what a caller that keeps nothing does
    assert list(tmp_path.iterdir()) == []
