"""Instance masks stored as runs of foreground pixels, row by row.

A box-cropped bool mask of h x w pixels takes h x w bytes; an object that a
large scene's seam merge joins across many tiles (a field, a lake) can span
the scene, so its mask would take memory by the scene's size. :class:`MaskRuns`
keeps only where each row's runs of True pixels start and end: memory grows
with the object's outline, not its area, and unions, crops and areas are
computed on the runs without ever making the dense mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .raster import Box


class MaskRuns:
    """An h x w bool mask as its runs of True pixels.

    Attributes:
        shape: (h, w) of the mask.
        rows, starts, ends: (R,) int32 arrays, run ``i`` covering columns
            ``starts[i]`` to ``ends[i]`` (exclusive) of row ``rows[i]``;
            sorted row-major, disjoint and never touching within a row, so
            that equal masks have equal runs.
    """

    __slots__ = ("shape", "rows", "starts", "ends")

    def __init__(
        self, shape: tuple[int, int], rows: np.ndarray, starts: np.ndarray, ends: np.ndarray
    ) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.rows = rows.astype(np.int32, copy=False)
        self.starts = starts.astype(np.int32, copy=False)
        self.ends = ends.astype(np.int32, copy=False)

    @classmethod
    def encode(cls, mask: np.ndarray) -> MaskRuns:
        """The runs of an h x w bool mask."""
        mask = np.asarray(mask, bool)
        edges = np.diff(mask, axis=1, prepend=False, append=False)  # h x (w + 1)
        rows, cols = np.nonzero(edges)  # row-major: each run's start, then its end
        return cls(mask.shape, rows[0::2], cols[0::2], cols[1::2])

    @classmethod
    def union(cls, shape: tuple[int, int], parts: Sequence[tuple[MaskRuns, int, int]]) -> MaskRuns:
        """The union of masks placed in an h x w ``shape``.

        Args:
            shape: (h, w) of the union.
            parts: ``(mask, dx, dy)``: each mask with its top-left corner at
                column ``dx``, row ``dy`` of the union, lying inside it.
        """
        rows = np.concatenate([p.rows.astype(np.int64) + dy for p, _, dy in parts])
        starts = np.concatenate([p.starts.astype(np.int64) + dx for p, dx, _ in parts])
        ends = np.concatenate([p.ends.astype(np.int64) + dx for p, dx, _ in parts])
        return cls._joined(shape, rows, starts, ends)

    @classmethod
    def _joined(
        cls, shape: tuple[int, int], rows: np.ndarray, starts: np.ndarray, ends: np.ndarray
    ) -> MaskRuns:
        """Runs that may overlap or touch, joined into canonical runs."""
        if rows.size == 0:
            return cls(shape, rows, starts, ends)
        order = np.lexsort((starts, rows))
        rows, starts, ends = rows[order], starts[order], ends[order]
        stride = shape[1] + 1  # a row's last end stays below the next row's first start
        reach = np.maximum.accumulate(rows * stride + ends)
        first = np.ones(rows.size, bool)
        first[1:] = rows[1:] * stride + starts[1:] > reach[:-1]
        heads = np.flatnonzero(first)
        lasts = np.append(heads[1:] - 1, rows.size - 1)
        return cls(shape, rows[heads], starts[heads], reach[lasts] - rows[heads] * stride)

    @property
    def area(self) -> int:
        """Number of True pixels."""
        return int((self.ends - self.starts).sum())

    @property
    def nbytes(self) -> int:
        """Memory taken by the runs."""
        return self.rows.nbytes + self.starts.nbytes + self.ends.nbytes

    def decode(self) -> np.ndarray:
        """The h x w bool mask."""
        height, width = self.shape
        steps = np.zeros(height * width + 1, np.int8)
        base = self.rows.astype(np.int64) * width
        steps[base + self.starts] += 1
        steps[base + self.ends] -= 1  # separate pass: an end may fall on the next row's start
        return np.cumsum(steps[:-1], dtype=np.int8).view(bool).reshape(height, width)

    def crop(self, box: Box) -> MaskRuns:
        """The mask inside ``box`` (x0, y0, x1, y1) of its own pixels, clipped
        to the mask."""
        x0, y0 = max(box[0], 0), max(box[1], 0)
        x1, y1 = min(box[2], self.shape[1]), min(box[3], self.shape[0])
        shape = (max(y1 - y0, 0), max(x1 - x0, 0))
        lo, hi = np.searchsorted(self.rows, [y0, y1])
        starts = np.maximum(self.starts[lo:hi], x0) - x0
        ends = np.minimum(self.ends[lo:hi], x1) - x0
        keep = starts < ends
        return MaskRuns(shape, self.rows[lo:hi][keep] - y0, starts[keep], ends[keep])
