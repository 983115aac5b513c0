"""Large scenes labelled as overlapping native-resolution tiles.

An image with a side longer than ``config.tile_size`` is cut into square
tiles of that side, ``config.tile_overlap`` pixels apart from their
neighbours' edges. Each tile is grounded and prompted as the paper does a
512-px patch (SD sees it at ``config.resolution``), and the scene is never
held in memory: the image and the heatmaps go by groups of tiles, DenseCRF
and SAM tile by tile.

**Three passes.**

1. *Ground.* Each tile with data gets its heatmaps (Eqs. 3, 4, 9) and, per
   class, its :func:`~diffuprompter_plugin.engine.grounding.pyramid_peak`:
   the mean over resolutions of the highest raw attention probability, which
   Eq. 4's per-map normalisation throws away. Tiles are read and grounded in
   groups (:func:`tiles_per_group`): a group's (tile, class, noise draw)
   triples share U-Net calls of ``loop_batch_size``, so the GPU stays busy
   when a tile's own C x L pairs would not fill a call; each tile's heatmaps
   are those it gets alone (its draws are seeded by draw index). Tiles
   entirely nodata are not run. Each tile's *core* (the pixels nearer its
   centre than any other tile's: overlaps split in the middle) goes to a
   scratch file.
2. *Compare tiles.* Eq. 4 stretches every tile's map to [0, 1], so a tile
   without the class would show foreground at its strongest noise. Each
   tile's heatmap is therefore multiplied by its peak over the scene's
   highest peak of that class (``peak / max peak``): a tile that attends to
   the class as strongly as the scene's best keeps its map, an empty tile,
   whose raw attention is weak, falls below gamma. Nodata pixels get 0. The
   result is stored at full resolution (:mod:`.heatmap_store`). A scene of
   one tile is today's image: its factor is 1.
3. *Segment.* Each tile is binarised (DenseCRF on the tile only) from the
   stored heatmap and prompted with SAM; its instances are moved into scene
   coordinates and merged (:func:`merge_instances`).

**Merge rule.** Two instances of the same class from different tiles are the
same object when, inside the window both tiles saw, their masks have an IoU
of at least :data:`MERGE_IOU` (both tiles saw the same pixels there, so an
object cut by one tile's edge still matches the other tile's view of it).
Matches are joined transitively (an object at a corner of four tiles is
one), and a group becomes one instance: the union of its masks, the union
box, the highest score, and the quality signals of its parts merged
(:func:`~.signals.merged_signals`: each signal the area-weighted mean of
the parts', quality recomputed from them). So an object inside an overlap
comes out once, and an object straddling a seam comes out once with its
mask whole. Instances that overlap nothing in a shared window are kept as
they are.

**Signals.** Each tile's instances get their signals from the tile's own
SAM call, heatmap and draws' spread (the ``heat_contrast`` ring and the
mask are clipped to the tile). The draws' spread is stored beside each
heatmap as a GeoTIFF of its own, scaled per tile by the same factor as the
heatmap, so ``draw_agreement`` (a ratio of the two) does not change with
the scaling, and re-thresholding reads it window by window.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from tqdm.auto import tqdm

from .config import DiffuPrompterConfig
from .heatmap_store import HeatmapWriter, heatmap_preview, read_heatmap_window
from .mask_runs import MaskRuns
from .raster import Box, Raster
from .segmentation import Instance, SamPrompter, Thresholds, binary_maps
from .signals import merged_signals

if TYPE_CHECKING:
    from .pipeline import Annotation, DiffuPrompter

MERGE_IOU = 0.5
"""IoU inside the shared window above which two tiles' instances are one."""

T = TypeVar("T")

PREVIEW_SIDE = 2048
"""Longest side of the in-memory heatmaps returned for a scene."""

GDAL_CACHE_MB = 128
"""GDAL's block cache while a scene is read and its heatmaps written (its
default, 5 % of RAM, would grow with the scene)."""


def _gdal_env():
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB)


def needs_tiling(height: int, width: int, config: DiffuPrompterConfig) -> bool:
    """Whether an image is labelled in tiles: a side over ``tile_size``."""
    return max(height, width) > config.tile_size


def _starts(length: int, size: int, overlap: int) -> list[int]:
    """Tile starts along one axis: every ``size - overlap`` px, the last one
    flush with the end."""
    if length <= size:
        return [0]
    step = size - overlap
    starts = list(range(0, length - size, step))
    return [*starts, length - size]


def _cores(starts: list[int], length: int, size: int) -> list[tuple[int, int]]:
    """Each tile's core along one axis: overlaps split in their middle."""
    ends = [min(s + size, length) for s in starts]
    cuts = [0, *((s + e) // 2 for s, e in zip(starts[1:], ends[:-1], strict=True)), length]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def tile_grid(height: int, width: int, size: int, overlap: int) -> list[tuple[Box, Box]]:
    """The tiles of an image, row by row, as ``(tile box, core box)``.

    Tiles are ``size`` x ``size`` (smaller only when the image is), cover the
    image, and share at least ``overlap`` px with their neighbours; the cores
    partition the image.
    """
    rows, cols = _starts(height, size, overlap), _starts(width, size, overlap)
    row_cores, col_cores = _cores(rows, height, size), _cores(cols, width, size)
    grid = []
    for y, (cy0, cy1) in zip(rows, row_cores, strict=True):
        for x, (cx0, cx1) in zip(cols, col_cores, strict=True):
            tile = (x, y, min(x + size, width), min(y + size, height))
            grid.append((tile, (cx0, cy0, cx1, cy1)))
    return grid


def _within(core: Box, tile: Box) -> tuple[slice, slice]:
    """The (rows, cols) slices of ``core`` inside ``tile``'s array."""
    return slice(core[1] - tile[1], core[3] - tile[1]), slice(core[0] - tile[0], core[2] - tile[0])


def _intersection(a: Box, b: Box) -> Box | None:
    box = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    return box if box[0] < box[2] and box[1] < box[3] else None


def _crop(inst: Instance, window: Box) -> np.ndarray:
    """The instance's mask over ``window`` (False outside its box)."""
    out = np.zeros((window[3] - window[1], window[2] - window[0]), bool)
    inside = _intersection(inst.box, window)
    if inside:
        x0, y0, x1, y1 = inside
        bx, by = inst.box[:2]
        own = inst.runs.crop((x0 - bx, y0 - by, x1 - bx, y1 - by))
        out[y0 - window[1] : y1 - window[1], x0 - window[0] : x1 - window[0]] = own.decode()
    return out


def _union(group: list[Instance]) -> Instance:
    """One instance of a group: mask union (joined run by run, never a dense
    mask of the union box), union box, highest score, merged signals."""
    if len(group) == 1:
        return group[0]
    box = (
        min(i.box[0] for i in group),
        min(i.box[1] for i in group),
        max(i.box[2] for i in group),
        max(i.box[3] for i in group),
    )
    shape = (box[3] - box[1], box[2] - box[0])
    parts = [(i.runs, i.box[0] - box[0], i.box[1] - box[1]) for i in group]
    signals = merged_signals([(i.signals, i.area) for i in group])
    runs = MaskRuns.union(shape, parts)
    return Instance(group[0].label, runs, box, max(i.score for i in group), signals)


def merge_instances(tiles: Sequence[tuple[Box, list[Instance]]]) -> list[Instance]:
    """Merges the instances of overlapping tiles (see the module's merge rule).

    Args:
        tiles: (tile box, its instances in scene coordinates) per tile.

    Returns:
        The scene's instances, each object once.
    """
    flat = [(t, inst) for t, (_, instances) in enumerate(tiles) for inst in instances]
    parent = list(range(len(flat)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_tile: dict[int, list[int]] = {}
    for k, (t, _) in enumerate(flat):
        by_tile.setdefault(t, []).append(k)
    for a in range(len(tiles)):
        for b in range(a + 1, len(tiles)):
            shared = _intersection(tiles[a][0], tiles[b][0])
            if shared is None:
                continue
            for i in by_tile.get(a, []):
                for j in by_tile.get(b, []):
                    if _same_object(flat[i][1], flat[j][1], shared):
                        parent[root(j)] = root(i)
    groups: dict[int, list[Instance]] = {}
    for k, (_, inst) in enumerate(flat):
        groups.setdefault(root(k), []).append(inst)
    return [_union(group) for group in groups.values()]


def _same_object(a: Instance, b: Instance, shared: Box) -> bool:
    """Whether two instances' masks match inside the ``shared`` window."""
    if a.label != b.label or _intersection(a.box, b.box) is None:
        return False
    window = _intersection(shared, _hull(a.box, b.box))
    if window is None:
        return False
    ma, mb = _crop(a, window), _crop(b, window)
    union = (ma | mb).sum()
    return bool(union) and (ma & mb).sum() / union >= MERGE_IOU


def _hull(a: Box, b: Box) -> Box:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _on_data(inst: Instance, valid: np.ndarray | None, min_area: int) -> Instance | None:
    """The instance without its nodata pixels (None when under ``min_area``);
    ``valid`` is the tile's mask, the instance in tile coordinates."""
    if valid is None:
        return inst
    x0, y0, x1, y1 = inst.box
    mask = inst.mask & valid[y0:y1, x0:x1]
    if mask.sum() < min_area:
        return None
    if mask.sum() == inst.mask.sum():
        return inst
    return Instance.from_full_mask(inst.label, mask, inst.score, inst.signals).shifted(x0, y0)


def _data_tiles(
    raster: Raster, grid: list[tuple[Box, Box]], bar: tqdm | None = None
) -> Iterator[tuple[Box, Box, np.ndarray, np.ndarray | None]]:
    """(tile, core, rgb, valid) of every tile that has data; a given ``bar``
    advances by one per tile skipped (entirely nodata)."""
    for tile, core in grid:
        rgb, valid = raster.read(tile)
        if valid is None or valid.any():
            yield tile, core, rgb, valid
        elif bar is not None:
            bar.update()


def tiles_per_group(config: DiffuPrompterConfig, classes: int) -> int:
    """Tiles grounded together: as many as one U-Net call of
    ``loop_batch_size`` (tile, class, noise draw) triples takes whole, at
    least one."""
    return max(1, config.loop_batch_size // (classes * config.loops))


def _groups(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last one may be shorter)."""
    iterator = iter(items)
    while group := list(islice(iterator, size)):
        yield group


def ground_scene(
    model: DiffuPrompter,
    raster: Raster,
    names: Sequence[str],
    paths: Mapping[str, str],
    georef: Mapping | None = None,
    progress: bool = False,
    spread_paths: Mapping[str, str] | None = None,
) -> None:
    """Passes 1 and 2: writes the scene's full-resolution heatmaps to ``paths``
    (``{class: .tif}``), each tile scaled by its peak over the scene's, and,
    with ``spread_paths`` (``{class: .tif}``), the draws' spreads scaled
    alike. Tiles are read and grounded in groups of :func:`tiles_per_group`,
    so memory holds one group. With ``progress``, a bar counts the tiles
    done."""
    config = model.config
    grid = tile_grid(raster.height, raster.width, config.tile_size, config.tile_overlap)
    shape = (raster.height, raster.width)
    layers = {("heat", n): path for n, path in paths.items()}
    layers.update({("spread", n): path for n, path in (spread_paths or {}).items()})
    scratch_dir = tempfile.mkdtemp(prefix="dp-scene-")
    try:
        scratch_paths = {
            key: os.path.join(scratch_dir, f"{k}.tif") for k, key in enumerate(layers)
        }
        scratch = HeatmapWriter(scratch_paths, shape)
        peaks: dict[Box, dict[str, float]] = {}
        size = tiles_per_group(config, len(names))
        with tqdm(total=len(grid), desc="Tiles", unit="tile", disable=not progress) as bar:
            for group in _groups(_data_tiles(raster, grid, bar), size):
                grounded = model.grounder.tile_heatmaps([rgb for _, _, rgb, _ in group], names)
                for (tile, core, _, valid), maps in zip(group, grounded, strict=True):
                    peaks[tile] = maps.peaks
                    for kind, name in layers:
                        layer = (maps.heatmaps if kind == "heat" else maps.spreads)[name]
                        if valid is not None:
                            layer[~valid] = 0
                        scratch.write((kind, name), core, layer[_within(core, tile)])
                    bar.update()
        scratch.close(overviews=False)
        best = {n: max((p[n] for p in peaks.values()), default=0.0) for n in names}
        final = HeatmapWriter(layers, shape, georef)
        for tile, core in grid:
            for kind, name in layers:
                peak = peaks.get(tile, {}).get(name, 0.0)
                layer = read_heatmap_window(scratch_paths[kind, name], core) if peak else None
                scale = peak / best[name] if best[name] > 0 else 0.0
                if layer is None:
                    layer = np.zeros((core[3] - core[1], core[2] - core[0]), np.float32)
                final.write((kind, name), core, layer * scale)
        final.close()
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)


def segment_scene(
    prompter: SamPrompter,
    raster: Raster,
    paths: Mapping[str, str],
    thresholds: Thresholds = None,
    spread_paths: Mapping[str, str] | None = None,
) -> list[Instance]:
    """Pass 3, also the re-threshold of a scene: instances from the stored
    full-resolution heatmaps ``paths`` (``{class: .tif}``), tile by tile,
    merged across seams; with the stored spreads ``spread_paths``, their
    signals include ``draw_agreement``."""
    config = prompter.config
    gammas = prompter.thresholds_for(list(paths), thresholds)
    grid = tile_grid(raster.height, raster.width, config.tile_size, config.tile_overlap)
    with _gdal_env():
        tiles = list(_segment_tiles(prompter, raster, paths, gammas, grid, spread_paths))
    return merge_instances(tiles)


def _segment_tiles(
    prompter: SamPrompter,
    raster: Raster,
    paths: Mapping[str, str],
    gammas: Mapping[str, float],
    grid: list[tuple[Box, Box]],
    spread_paths: Mapping[str, str] | None,
) -> Iterator[tuple[Box, list[Instance]]]:
    """(tile, its instances in scene coordinates) of each tile with foreground."""
    config = prompter.config
    for tile, _, rgb, valid in _data_tiles(raster, grid):
        heatmaps = {name: read_heatmap_window(path, tile) for name, path in paths.items()}
        if all(heatmaps[n].max() <= gammas[n] for n in heatmaps):
            continue  # nothing above gamma: the CRF's unary is background everywhere
        spreads = spread_paths and {
            n: read_heatmap_window(p, tile) for n, p in spread_paths.items()
        }
        binaries = binary_maps(rgb, heatmaps, gammas, config)
        instances = prompter.prompt(rgb, heatmaps, binaries, spreads)
        kept = (_on_data(inst, valid, config.min_area) for inst in instances)
        yield tile, [inst.shifted(tile[0], tile[1]) for inst in kept if inst]


def annotate_scene(
    model: DiffuPrompter,
    raster: Raster,
    names: Sequence[str],
    thresholds: Thresholds = None,
    progress: bool = False,
) -> Annotation:
    """Labels a large scene in tiles; with ``progress``, a bar counts the
    tiles grounded.

    Returns:
        an Annotation whose ``heatmaps`` are previews (longest side
        :data:`PREVIEW_SIDE`) and whose ``heatmap_files`` are the
        full-resolution GeoTIFFs and whose ``spread_files`` the draws'
        spreads beside them, in a new temporary folder the caller owns.
    """
    from .pipeline import Annotation

    folder = tempfile.mkdtemp(prefix="dp-heatmaps-")
    paths = {name: os.path.join(folder, f"{k}.tif") for k, name in enumerate(names)}
    spreads = {name: os.path.join(folder, f"{k}_spread.tif") for k, name in enumerate(names)}
    with _gdal_env():
        ground_scene(model, raster, names, paths, raster.georef, progress, spreads)
        instances = segment_scene(model.sam_prompter, raster, paths, thresholds, spreads)
        previews = {name: heatmap_preview(path, PREVIEW_SIDE) for name, path in paths.items()}
    shape = (raster.height, raster.width)
    return Annotation(previews, instances, paths, shape, spread_files=spreads)
