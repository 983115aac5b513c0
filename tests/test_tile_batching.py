"""Tiles grounded together: (tile, class, noise draw) triples share U-Net
calls, and each tile's heatmaps are those it gets alone."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from diffuprompter_plugin.engine.config import DiffuPrompterConfig
from diffuprompter_plugin.engine.grounding import TextGrounder
from diffuprompter_plugin.engine.heatmap_store import read_heatmap_window
from diffuprompter_plugin.engine.pipeline import DiffuPrompter
from diffuprompter_plugin.engine.raster import open_raster
from diffuprompter_plugin.engine.scenes import scene_steps, tiles_per_group
from diffuprompter_plugin.engine.segmentation import SamPrompter
from diffuprompter_plugin.engine.stable_diffusion import load_stable_diffusion

SCENE_TILES = dict(tile_size=64, tile_overlap=16)
"""A 128 x 128 px scene in 3 x 3 tiles of 64 px."""

ROUNDING = {torch.float64: 1e-6, torch.float32: 1e-5}
"""How far a tile's batched heatmaps may be from its own. On the CPU the
U-Net's float32 output for one sample moves by about 1e-6 with the batch
size (MKL blocking), so heatmaps differ by about 2e-6 between loop batch
sizes already; in float64 they are equal."""


@pytest.fixture(scope="module")
def models64(tiny_models):
    """The tiny Stable Diffusion in float64."""
    return load_stable_diffusion(tiny_models[0], torch.device("cpu"), torch.float64)


def _model(prompter, sd, **changes) -> DiffuPrompter:
    """A tiny DiffuPrompter on ``sd`` (in its dtype) with changed settings."""
    config = prompter.config.replace(**changes)
    g = prompter.grounder
    sam = SamPrompter(prompter.sam_prompter.predictor.model, config, g.device)
    return DiffuPrompter(TextGrounder(sd, config, g.device, sd.unet.dtype), sam, config)


@contextlib.contextmanager
def _unet_batches(grounder: TextGrounder):
    """The batch size of each U-Net call made inside the block."""
    batches: list[int] = []
    hook = grounder.sd.unet.register_forward_hook(
        lambda m, args, out: batches.append(len(args[0]))
    )
    try:
        yield batches
    finally:
        hook.remove()


def _image(height: int, width: int, seed: int) -> np.ndarray:
    """Noise with a bright square placed by the seed."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
    image[y : y + height // 3, x : x + width // 3] = 220
    return image


def _assert_same(together, alone, atol: float) -> None:
    for shared, own in zip(together, alone, strict=True):
        assert list(shared.heatmaps) == list(own.heatmaps)
        for name, heat in shared.heatmaps.items():
            assert heat.shape == own.heatmaps[name].shape
            np.testing.assert_allclose(heat, own.heatmaps[name], rtol=0, atol=atol, err_msg=name)
            spread = shared.spreads[name]  # the draws' spread, accumulated call by call
            np.testing.assert_allclose(spread, own.spreads[name], rtol=0, atol=atol, err_msg=name)
            assert shared.peaks[name] == pytest.approx(own.peaks[name], rel=0, abs=atol)


def _alone(grounder: TextGrounder, images, names):
    for image in images:
        yield from grounder.tile_heatmaps([image], names)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_batched_tiles_equal_tile_by_tile_in_fewer_unet_calls(tiny_diffuprompter, models64, dtype):
    sd = models64 if dtype == torch.float64 else tiny_diffuprompter.grounder.sd
    tiles = [_image(64, 64, seed) for seed in range(4)]
    names = ["ship", "harbor"]
    g = _model(tiny_diffuprompter, sd, loops=3, loop_batch_size=8).grounder
    with _unet_batches(g) as batches:
        together = list(g.tile_heatmaps(tiles, names))
    assert batches == [8, 8, 8]  # 4 tiles x 2 classes x 3 draws; calls cut across tiles
    with _unet_batches(g) as batches:
        alone = list(_alone(g, tiles, names))
    assert batches == [6, 6, 6, 6]
    _assert_same(together, alone, ROUNDING[dtype])
    first, second = together[0].heatmaps["ship"], together[1].heatmaps["ship"]
    assert np.abs(first - second).max() > 0.1  # the tiles' own maps, not one shared


def test_tiles_of_another_working_size_are_grounded_apart_and_returned_in_order(
    tiny_diffuprompter, models64
):
    images = [_image(64, 64, 0), _image(64, 32, 1), _image(64, 64, 2)]  # an edge tile
    g = _model(tiny_diffuprompter, models64, loops=2, loop_batch_size=8, resolution=128).grounder
    with _unet_batches(g) as batches:
        together = list(g.tile_heatmaps(images, ["ship"]))
    assert batches == [4, 2]  # latents 16 x 16 (two tiles) and 16 x 8
    assert [g.heatmaps["ship"].shape for g in together] == [(64, 64), (64, 32), (64, 64)]
    _assert_same(together, _alone(g, images, ["ship"]), ROUNDING[torch.float64])


def test_tiles_per_group_fill_one_unet_call():
    assert tiles_per_group(DiffuPrompterConfig(loops=1, loop_batch_size=16), 1) == 16
    assert tiles_per_group(DiffuPrompterConfig(loops=2, loop_batch_size=16), 3) == 2
    assert tiles_per_group(DiffuPrompterConfig(loops=50, loop_batch_size=25), 1) == 1


def _geotiff_with_nodata(path) -> None:
    """128 x 128 px RGB, nodata 0 on the left 64 columns: the left column of
    3 x 3 tiles (x 0-64) has no data."""
    data = _image(128, 128, 5).transpose(2, 0, 1).clip(1, 255)
    data[:, :, :64] = 0
    profile = dict(driver="GTiff", width=128, height=128, count=3, dtype="uint8", nodata=0)
    transform = from_origin(500000, 5000000, 0.5, 0.5)
    with rasterio.open(path, "w", crs="EPSG:32633", transform=transform, **profile) as dst:
        dst.write(data)


def test_a_scene_grounded_in_groups_stores_the_tile_by_tile_heatmaps(
    tiny_diffuprompter, models64, tmp_path
):
    _geotiff_with_nodata(tmp_path / "scene.tif")
    names = ["ship", "harbor"]
    stored = {}
    for batch_size in (4, 16):  # 1 tile (4 triples) per call, then 4 tiles
        model = _model(
            tiny_diffuprompter, models64, loops=2, loop_batch_size=batch_size, **SCENE_TILES
        )
        paths = {n: str(tmp_path / f"{batch_size}-{n}.tif") for n in names}
        gammas = dict.fromkeys(names, 0.4)
        with _unet_batches(model.grounder) as batches, open_raster(tmp_path / "scene.tif") as r:
            steps = list(scene_steps(model.grounder, r, names, gammas, paths))
        assert len(steps) == len(batches) + 9  # a step per group grounded, then per tile
        assert steps[: len(batches)] == [None] * len(batches)
        assert 0 < sum(step is not None for step in steps) <= 6  # tiles with data and foreground
        stored[batch_size] = {n: read_heatmap_window(p) for n, p in paths.items()}
        assert batches == {4: [4] * 6, 16: [16, 8]}[batch_size]  # 6 tiles with data
    for name in names:
        np.testing.assert_allclose(
            stored[16][name], stored[4][name], rtol=0, atol=ROUNDING[torch.float64]
        )
        assert stored[16][name][:, :64].max() == 0  # nodata
        assert stored[16][name].max() > 0.5


def test_a_scene_shows_a_bar_over_its_tiles_skipped_ones_included(
    tiny_diffuprompter, tmp_path, capsys
):
    _geotiff_with_nodata(tmp_path / "scene.tif")
    model = _model(
        tiny_diffuprompter,
        tiny_diffuprompter.grounder.sd,
        loops=1,
        loop_batch_size=4,
        **SCENE_TILES,
    )
    model.annotate(tmp_path / "scene.tif", ["ship"])
    assert "Tiles" not in capsys.readouterr().err  # off by default
    model.annotate(tmp_path / "scene.tif", ["ship"], progress=True)
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert any(line.startswith("Tiles: 100%") and "9/9" in line for line in bar)
