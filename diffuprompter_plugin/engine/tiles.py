"""Tile geometry of large scenes, tile-wise scaling and the seam merge.

Model-free (numpy only): the scene driver (:mod:`.scenes`) and the
importers' patch windows share this grid.

**Grid.** An image with a side longer than ``config.tile_size`` is cut into
square tiles of that side, ``config.tile_overlap`` pixels apart from their
neighbours' edges (:func:`needs_tiling`, :func:`tile_grid`). Each tile's
*core* is the pixels nearer its centre than any other tile's: overlaps
split in the middle, and the cores partition the image.

**Merge rule.** Two instances of the same class from different tiles are the
same object when, inside the window both tiles saw, their masks have an IoU
of at least :data:`MERGE_IOU` (both tiles saw the same pixels there, so an
object cut by one tile's edge still matches the other tile's view of it).
Matches are joined transitively (an object at a corner of four tiles is
one), and a group becomes one instance: the union of its masks, the union
box, the highest score. So an object inside an overlap comes out once, and
an object straddling a seam comes out once with its mask whole. Instances
that overlap nothing in a shared window are kept as they are.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .config import DiffuPrompterConfig
from .mask_runs import MaskRuns
from .raster import Box
from .signals import merged_signals

if TYPE_CHECKING:
    from .segmentation import Instance

MERGE_IOU = 0.5
"""IoU inside the shared window above which two tiles' instances are one."""


def needs_tiling(height: int, width: int, config: DiffuPrompterConfig) -> bool:
    """Whether an image is labelled in tiles: a side over ``tile_size``. The
    one rule for labelling and for re-thresholding."""
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


def within(core: Box, tile: Box) -> tuple[slice, slice]:
    """The (rows, cols) slices of ``core`` inside ``tile``'s array."""
    return slice(core[1] - tile[1], core[3] - tile[1]), slice(core[0] - tile[0], core[2] - tile[0])


def cores_within(cores: np.ndarray, box: Box) -> Iterator[tuple[int, tuple[slice, slice]]]:
    """The tiles whose core meets ``box``: ``(index, (rows, cols))``, the
    slices of the core's part inside ``box``'s array.

    Args:
        cores: N x 4 int array, the grid's core boxes (:func:`tile_grid`).
    """
    x0, y0, x1, y1 = box
    meets = (cores[:, 0] < x1) & (cores[:, 2] > x0) & (cores[:, 1] < y1) & (cores[:, 3] > y0)
    for index in np.flatnonzero(meets):
        cx0, cy0, cx1, cy1 = cores[index]
        inside = (max(cx0, x0), max(cy0, y0), min(cx1, x1), min(cy1, y1))
        yield int(index), within(inside, box)


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
    mask of the union box), union box, highest score, and its parts' quality
    signals merged (:func:`~.signals.merged_signals`: each the area-weighted
    mean of the parts', quality recomputed from them)."""
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
    first = group[0]
    signals = merged_signals([(i.signals, i.area) for i in group])
    runs = MaskRuns.union(shape, parts)
    return type(first)(first.label, runs, box, max(i.score for i in group), signals)


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


def tile_scales(
    peaks: Mapping[Box, Mapping[str, float]], names: Sequence[str]
) -> dict[Box, dict[str, float]]:
    """Tile-wise scaling: each tile's factor per class, its peak over the
    highest peak of that class in the scene (0 where the class has none).

    Args:
        peaks: ``{tile box: {class: the tile's raw attention peak}}`` of the
            tiles grounded.
    """
    best = {n: max((p[n] for p in peaks.values()), default=0.0) for n in names}
    return {
        tile: {n: tile_peaks[n] / best[n] if best[n] > 0 else 0.0 for n in names}
        for tile, tile_peaks in peaks.items()
    }
