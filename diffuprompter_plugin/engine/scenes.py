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
   coordinates and merged (:func:`~.tiles.merge_instances`).

The tile geometry, the scaling and the seam merge are in :mod:`.tiles`.
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
from .raster import Box, Raster
from .segmentation import Instance, SamPrompter, Thresholds, binary_maps
from .tiles import merge_instances, tile_grid, within

if TYPE_CHECKING:
    from .pipeline import Annotation, DiffuPrompter

T = TypeVar("T")

PREVIEW_SIDE = 2048
"""Longest side of the in-memory heatmaps returned for a scene."""


GDAL_CACHE_MB = 128
"""GDAL's block cache while a scene is read and its heatmaps written (its
default, 5 % of RAM, would grow with the scene)."""


def _gdal_env():
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB)


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
    return Instance.from_full_mask(inst.label, mask, inst.score).shifted(x0, y0)


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
) -> None:
    """Passes 1 and 2: writes the scene's full-resolution heatmaps to ``paths``
    (``{class: .tif}``), each tile scaled by its peak over the scene's. Tiles
    are read and grounded in groups of :func:`tiles_per_group`, so memory
    holds one group. With ``progress``, a bar counts the tiles done."""
    config = model.config
    grid = tile_grid(raster.height, raster.width, config.tile_size, config.tile_overlap)
    shape = (raster.height, raster.width)
    scratch_dir = tempfile.mkdtemp(prefix="dp-scene-")
    try:
        scratch_paths = {n: os.path.join(scratch_dir, f"{k}.tif") for k, n in enumerate(names)}
        scratch = HeatmapWriter(scratch_paths, shape)
        peaks: dict[Box, dict[str, float]] = {}
        size = tiles_per_group(config, len(names))
        with tqdm(total=len(grid), desc="Tiles", unit="tile", disable=not progress) as bar:
            for group in _groups(_data_tiles(raster, grid, bar), size):
                grounded = model.grounder.tile_heatmaps([rgb for _, _, rgb, _ in group], names)
                for (tile, core, _, valid), (heatmaps, tile_peaks) in zip(
                    group, grounded, strict=True
                ):
                    peaks[tile] = tile_peaks
                    for name, heat in heatmaps.items():
                        if valid is not None:
                            heat[~valid] = 0
                        scratch.write(name, core, heat[within(core, tile)])
                    bar.update()
        scratch.close(overviews=False)
        best = {n: max((p[n] for p in peaks.values()), default=0.0) for n in names}
        final = HeatmapWriter(paths, shape, georef)
        for tile, core in grid:
            for name in names:
                peak = peaks.get(tile, {}).get(name, 0.0)
                heat = read_heatmap_window(scratch_paths[name], core) if peak else None
                scale = peak / best[name] if best[name] > 0 else 0.0
                if heat is None:
                    heat = np.zeros((core[3] - core[1], core[2] - core[0]), np.float32)
                final.write(name, core, heat * scale)
        final.close()
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)


def segment_scene(
    prompter: SamPrompter,
    raster: Raster,
    paths: Mapping[str, str],
    thresholds: Thresholds = None,
) -> list[Instance]:
    """Pass 3, also the re-threshold of a scene: instances from the stored
    full-resolution heatmaps ``paths`` (``{class: .tif}``), tile by tile,
    merged across seams."""
    config = prompter.config
    gammas = prompter.thresholds_for(list(paths), thresholds)
    grid = tile_grid(raster.height, raster.width, config.tile_size, config.tile_overlap)
    with _gdal_env():
        tiles = list(_segment_tiles(prompter, raster, paths, gammas, grid))
    return merge_instances(tiles)


def _segment_tiles(
    prompter: SamPrompter,
    raster: Raster,
    paths: Mapping[str, str],
    gammas: Mapping[str, float],
    grid: list[tuple[Box, Box]],
) -> Iterator[tuple[Box, list[Instance]]]:
    """(tile, its instances in scene coordinates) of each tile with foreground."""
    config = prompter.config
    for tile, _, rgb, valid in _data_tiles(raster, grid):
        heatmaps = {name: read_heatmap_window(path, tile) for name, path in paths.items()}
        if all(heatmaps[n].max() <= gammas[n] for n in heatmaps):
            continue  # nothing above gamma: the CRF's unary is background everywhere
        binaries = binary_maps(rgb, heatmaps, gammas, config)
        instances = prompter.prompt(rgb, heatmaps, binaries)
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
        full-resolution GeoTIFFs, in a new temporary folder the caller owns.
    """
    from .pipeline import Annotation

    folder = tempfile.mkdtemp(prefix="dp-heatmaps-")
    paths = {name: os.path.join(folder, f"{k}.tif") for k, name in enumerate(names)}
    with _gdal_env():
        ground_scene(model, raster, names, paths, raster.georef, progress)
        instances = segment_scene(model.prompter, raster, paths, thresholds)
        previews = {name: heatmap_preview(path, PREVIEW_SIDE) for name, path in paths.items()}
    return Annotation(previews, instances, paths, (raster.height, raster.width))
