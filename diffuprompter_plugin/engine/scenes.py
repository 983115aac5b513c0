"""Large scenes labelled as overlapping native-resolution tiles.

An image with a side longer than ``config.tile_size`` is cut into square
tiles of that side, ``config.tile_overlap`` pixels apart from their
neighbours' edges. Each tile is grounded and prompted as the paper does a
512-px patch (SD sees it at ``config.resolution``), and the scene is never
held in memory: the image and the heatmaps go by groups of tiles, DenseCRF
and SAM tile by tile. The steps are generators, so that
:meth:`~.pipeline.DiffuPrompter.annotate_all` interleaves them with the
DenseCRF pool and the SAM stage of earlier tiles: a scene takes the same
path as an image, which is a scene of one tile.

**Three passes** (:func:`scene_steps`).

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
   whose raw attention is weak, falls below gamma. Nodata pixels get 0. A
   scene of one tile is today's image: its factor is 1. This needs every
   tile grounded, so a scene's DenseCRF starts only once it is: it is the
   next scene's grounding that overlaps this one's DenseCRF and SAM.
3. *Segment.* Tile by tile, the scaled heatmaps of the tile (the cores in
   it, each by its own tile's factor) are written to the full-resolution
   files (:mod:`.heatmap_store`) core by core, and a tile with foreground
   is binarised (DenseCRF on the tile only, for each class with
   foreground) and prompted with SAM (:func:`tile_instances`) on exactly
   what the files hold; its instances are moved into scene coordinates and
   merged (:func:`~.tiles.merge_instances`). Re-thresholding
   (:func:`segment_scene`) reads the files and gives what the run gave.

The tile geometry, the scaling and the seam merge are in :mod:`.tiles`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import ParamSpec, TypeVar

import numpy as np
from tqdm.auto import tqdm

from .config import DiffuPrompterConfig
from .crf import has_foreground
from .grounding import TextGrounder
from .heatmap_store import HeatmapWriter, heatmap_preview, read_heatmap_window, stored_heatmap
from .local_copy import local_copy
from .raster import Box, Raster, has_data
from .segmentation import Instance, SamPrompter, Thresholds, binary_maps, zero_nodata
from .tiles import cores_within, merge_instances, tile_grid, tile_scales, within

T = TypeVar("T")
P = ParamSpec("P")
_END = object()

PREVIEW_SIDE = 2048
"""Longest side of the in-memory heatmaps returned for a scene."""

GDAL_CACHE_MB = 128
"""GDAL's block cache while a scene is read and its heatmaps written (its
default, 5 % of RAM, would grow with the scene)."""


def gdal_env():
    """The GDAL settings under which a scene is read and written."""
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB)


def _steps_under_gdal_env(steps: Callable[P, Iterator[T]]) -> Callable[P, Iterator[T]]:
    """A generator function whose every step runs under :func:`gdal_env`,
    and none of its pauses: rasterio's ``Env`` is a stack per thread, so
    the steps of two scenes interleaved in one stream must not hold one
    across a ``yield``."""

    @functools.wraps(steps)
    def run(*args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        inner = steps(*args, **kwargs)
        try:
            while True:
                with gdal_env():
                    step = next(inner, _END)
                if step is _END:
                    return
                yield step
        finally:  # stopped early: the inner generator cleans up now
            inner.close()

    return run


@dataclass
class TileWork:
    """One tile whose heatmaps are final: what DenseCRF and SAM take. An
    image labelled whole is one tile, its box the whole image.

    Attributes:
        tile: the tile's box (x0, y0, x1, y1) in the image.
        rgb: h x w x 3 uint8 pixels of the tile.
        heatmaps: ``{class name: h x w float32 in [0, 1]}``.
        gammas: ``{class name: threshold}``.
        valid: h x w bool, False on nodata; None when all pixels are data.
        spreads: ``{class name: h x w float32}``, the noise draws' spread
            (see :class:`~.grounding.Grounded`), which ``draw_agreement``
            is measured from; None for a run stored before the signals.
    """

    tile: Box
    rgb: np.ndarray
    heatmaps: dict[str, np.ndarray]
    gammas: Mapping[str, float]
    valid: np.ndarray | None = None
    spreads: dict[str, np.ndarray] | None = None

    def with_foreground(self) -> list[str]:
        """The classes above their threshold somewhere in the tile: those
        whose DenseCRF runs (the others' binary map is empty)."""
        return [n for n, heat in self.heatmaps.items() if has_foreground(heat, self.gammas[n])]


def tile_instances(
    prompter: SamPrompter, work: TileWork, binaries: Mapping[str, np.ndarray]
) -> list[Instance]:
    """The SAM stage of one tile from its binary maps (``{class: h x w
    bool}``): its instances in image coordinates, none on nodata pixels."""
    instances = prompter.prompt(work.rgb, work.heatmaps, binaries, work.valid, work.spreads)
    return [inst.shifted(work.tile[0], work.tile[1]) for inst in instances]


def _data_tiles(
    raster: Raster, grid: list[tuple[Box, Box]], bar: tqdm | None = None
) -> Iterator[tuple[Box, Box, np.ndarray, np.ndarray | None]]:
    """(tile, core, rgb, valid) of every tile that has data; a given ``bar``
    advances by one per tile skipped (entirely nodata)."""
    for tile, core in grid:
        rgb, valid = raster.read(tile)
        if has_data(valid):
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


def scene_grid(raster: Raster, config: DiffuPrompterConfig) -> list[tuple[Box, Box]]:
    """The (tile, core) boxes of a scene (:func:`~.tiles.tile_grid`)."""
    return tile_grid(raster.height, raster.width, config.tile_size, config.tile_overlap)


def heatmap_folder(names: Sequence[str]) -> tuple[str, dict[str, str], dict[str, str]]:
    """A new temporary folder and, in it, ``{class: .tif path}`` of a
    scene's heatmaps and of their draws' spreads; the caller owns the
    folder."""
    folder = tempfile.mkdtemp(prefix="dp-heatmaps-")
    heatmaps = {name: os.path.join(folder, f"{k}.tif") for k, name in enumerate(names)}
    spreads = {name: os.path.join(folder, f"{k}_spread.tif") for k, name in enumerate(names)}
    return folder, heatmaps, spreads


@_steps_under_gdal_env
def scene_steps(
    grounder: TextGrounder,
    raster: Raster,
    names: Sequence[str],
    gammas: Mapping[str, float],
    paths: Mapping[str, str],
    spread_paths: Mapping[str, str] | None = None,
    progress: bool = False,
) -> Iterator[TileWork | None]:
    """The run of a scene, as steps. Pass 1 yields None after each group of
    tiles grounded (:func:`tiles_per_group`, so memory holds one group);
    passes 2 and 3 then take a step per tile (:func:`_scaled_tiles`): the
    tile's scaled heatmaps are written to ``paths`` (``{class: .tif}``,
    georeferenced as the raster) and, with ``spread_paths`` (``{class:
    .tif}``), its draws' spreads, scaled alike (so ``draw_agreement``, a
    ratio of the two, does not change with the scaling), to those; a tile
    with data and some class above its threshold (``gammas``) is yielded
    as its :class:`TileWork`, any other tile as None. A tile's heatmaps are
    what the files hold, so re-thresholding the files
    (:func:`segment_scene`) gives what the run gave, and its DenseCRF can
    start while the files are still being written. With ``progress``, a
    bar counts the tiles grounded.
    """
    grid = scene_grid(raster, grounder.config)
    shape = (raster.height, raster.width)
    scratch_dir = tempfile.mkdtemp(prefix="dp-scene-")
    writers: list[HeatmapWriter] = []
    try:
        layers = {("heat", n): path for n, path in paths.items()}
        layers.update({("spread", n): path for n, path in (spread_paths or {}).items()})
        scratch_paths = {
            key: os.path.join(scratch_dir, f"{k}.tif") for k, key in enumerate(layers)
        }
        scratch = HeatmapWriter(scratch_paths, shape, scratch=True)
        writers.append(scratch)
        peaks = yield from _ground_tiles(grounder, raster, grid, names, scratch, progress)
        scratch.close(overviews=False)
        final = HeatmapWriter(layers, shape, raster.georef)
        writers.append(final)
        scales = tile_scales(peaks, names)
        factors = {n: [scales.get(tile, {}).get(n, 0.0) for tile, _ in grid] for n in names}
        yield from _scaled_tiles(raster, grid, factors, scratch_paths, final, gammas)
        final.close(overviews={key for key in layers if key[0] == "heat"})  # spreads: no previews
    finally:  # failed or abandoned: no file stays open (closing twice is harmless)
        for writer in writers:
            with contextlib.suppress(Exception):
                writer.close(overviews=False)
        shutil.rmtree(scratch_dir, ignore_errors=True)


def _scaled_tiles(
    raster: Raster,
    grid: list[tuple[Box, Box]],
    factors: Mapping[str, Sequence[float]],
    scratch_paths: Mapping[tuple[str, str], str],
    final: HeatmapWriter,
    gammas: Mapping[str, float],
) -> Iterator[TileWork | None]:
    """Passes 2 and 3, a step per tile of ``grid``: the unscaled layers of
    ``scratch_paths`` (keys ``("heat" | "spread", class)``) at the tile,
    each core in it times its own tile's factor (``factors``: ``{class:
    one per tile}``), the tile's own core written to ``final``; then the
    tile's work as :func:`_foreground_work` gives it (None for a tile
    without data)."""
    cores = np.asarray([core for _, core in grid])
    names = list(factors)
    with_spreads = any(kind == "spread" for kind, _ in scratch_paths)
    for tile, core in grid:
        scaled = {
            key: _scaled_window(path, tile, cores, factors[key[1]])
            for key, path in scratch_paths.items()
        }
        for key, window in scaled.items():
            final.write(key, core, window[within(core, tile)])
        rgb, valid = raster.read(tile)
        work = None  # no data: not grounded, its core all 0
        if has_data(valid):
            heatmaps = {n: stored_heatmap(scaled["heat", n]) for n in names}
            spreads = with_spreads and (
                lambda scaled=scaled: {n: stored_heatmap(scaled["spread", n]) for n in names}
            )
            work = _foreground_work(tile, rgb, valid, heatmaps, gammas, spreads)
        yield work  # None: a step all the same, so the stream goes on meanwhile


def _ground_tiles(
    grounder: TextGrounder,
    raster: Raster,
    grid: list[tuple[Box, Box]],
    names: Sequence[str],
    scratch: HeatmapWriter,
    progress: bool,
) -> Generator[None, None, dict[Box, dict[str, float]]]:
    """Pass 1, as steps (one per group of tiles grounded): each tile's
    unscaled heatmaps and spreads, 0 on nodata, written core by core to
    ``scratch`` (keys ``("heat" | "spread", class)``). Returns each tile's
    peaks (``{tile: {class: peak}}``)."""
    peaks: dict[Box, dict[str, float]] = {}
    size = tiles_per_group(grounder.config, len(names))
    with tqdm(total=len(grid), desc="Tiles", unit="tile", disable=not progress) as bar:
        for group in _groups(_data_tiles(raster, grid, bar), size):
            grounded = grounder.tile_heatmaps([rgb for _, _, rgb, _ in group], names)
            for (tile, core, _, valid), maps in zip(group, grounded, strict=True):
                peaks[tile] = maps.peaks
                zero_nodata(maps.heatmaps, valid)
                zero_nodata(maps.spreads, valid)
                for kind, name in scratch.paths:
                    layer = (maps.heatmaps if kind == "heat" else maps.spreads)[name]
                    scratch.write((kind, name), core, layer[within(core, tile)])
                bar.update()
            yield
    return peaks


def _scaled_window(path: str, box: Box, cores: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """The unscaled heatmap file ``path`` at ``box``, each tile's core in it
    times that tile's factor (``factors``, one per tile of the grid whose
    core boxes are ``cores``)."""
    window = read_heatmap_window(path, box)
    for index, inside in cores_within(cores, box):
        window[inside] *= factors[index]
    return window


@_steps_under_gdal_env
def stored_tiles(
    raster: Raster,
    paths: Mapping[str, str],
    gammas: Mapping[str, float],
    config: DiffuPrompterConfig,
    spread_paths: Mapping[str, str] | None = None,
) -> Iterator[TileWork]:
    """Pass 3's input when re-thresholding a stored scene: each tile with
    data and with some class above its threshold, read from the raster and
    the stored heatmaps ``paths`` (``{class: .tif}``) as it is taken, with
    the draws' spreads ``spread_paths`` where the run stored them."""
    for tile, _, rgb, valid in _data_tiles(raster, scene_grid(raster, config)):
        heatmaps = {name: read_heatmap_window(path, tile) for name, path in paths.items()}
        spreads = spread_paths and (
            lambda tile=tile: {n: read_heatmap_window(p, tile) for n, p in spread_paths.items()}
        )
        if work := _foreground_work(tile, rgb, valid, heatmaps, gammas, spreads):
            yield work


def _foreground_work(
    tile: Box,
    rgb: np.ndarray,
    valid: np.ndarray | None,
    heatmaps: dict[str, np.ndarray],
    gammas: Mapping[str, float],
    spreads: Callable[[], dict[str, np.ndarray]] | None,
) -> TileWork | None:
    """The tile's work when some class is above its threshold (its spreads
    taken from ``spreads`` then, if given), else None."""
    work = TileWork(tile, rgb, heatmaps, gammas, valid)
    if not work.with_foreground():
        return None
    if spreads:
        work.spreads = spreads()
    return work


def scene_previews(paths: Mapping[str, str]) -> dict[str, np.ndarray]:
    """``{class: heatmap preview}``, longest side :data:`PREVIEW_SIDE`, of a
    scene's stored heatmaps."""
    with gdal_env():
        return {name: heatmap_preview(path, PREVIEW_SIDE) for name, path in paths.items()}


def segment_scene(
    prompter: SamPrompter,
    raster: Raster,
    paths: Mapping[str, str],
    thresholds: Thresholds = None,
    spread_paths: Mapping[str, str] | None = None,
) -> list[Instance]:
    """Pass 3 in this process, the re-threshold of a scene: instances from
    the stored full-resolution heatmaps ``paths`` (``{class: .tif}``), tile
    by tile, merged across seams; with the stored spreads ``spread_paths``
    their signals include ``draw_agreement``. Gives what the run gave with
    the same thresholds, with or without its DenseCRF pool."""
    gammas = prompter.thresholds_for(list(paths), thresholds)
    tiles = []
    with local_copy(raster) as scene:  # remote: each block fetched once
        for work in stored_tiles(scene, paths, gammas, prompter.config, spread_paths):
            binaries = binary_maps(work.rgb, work.heatmaps, gammas, prompter.config)
            tiles.append((work.tile, tile_instances(prompter, work, binaries)))
    return merge_instances(tiles)
