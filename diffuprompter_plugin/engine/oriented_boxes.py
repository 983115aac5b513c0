"""Oriented boxes: an instance mask's minimum-area enclosing rectangle.

DOTA, iSAID and most rotated-object detectors describe an object by the
four corners of a rotated rectangle. An instance mask gives the tightest
one: the minimum-area rectangle that encloses every one of its pixels
(OpenCV's rotating calipers, ``cv2.minAreaRect``, on the corners of the
pixels at the ends of each row, which span the same convex hull as all the
mask's pixels). Coordinates follow the pixel-corner convention of the rest
of the project: pixel (col, row) covers ``[col, col + 1] x [row, row + 1]``,
so a mask of one w x h block has the box of that block's outer edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OrientedBox:
    """A rotated rectangle in pixel coordinates (x right, y down).

    Attributes:
        corners: 4 x 2 float64 ``(x, y)``, clockwise as seen on screen,
            starting from the top-most corner (the left one of a level top
            edge), as DOTA lists them.
        angle: degrees in [-90, 90): the direction of the long side,
            measured from the +x axis towards +y (clockwise on screen);
            0 for a box whose long side is horizontal.
        length: the long side, in pixels.
        width: the short side, in pixels.
    """

    corners: np.ndarray
    angle: float
    length: float
    width: float

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) of the centre."""
        x, y = self.corners.mean(axis=0)
        return float(x), float(y)

    def shifted(self, dx: float, dy: float) -> OrientedBox:
        """The same box moved by ``(dx, dy)`` pixels."""
        return OrientedBox(self.corners + (dx, dy), self.angle, self.length, self.width)


def oriented_box(mask: np.ndarray) -> OrientedBox | None:
    """The minimum-area rectangle enclosing the True pixels of a 2-D mask
    (every part of a multi-part instance); None for an empty mask.

    Args:
        mask: H x W bool (or 0/1) array; the box is in its pixel coordinates.
    """
    import cv2

    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    lines = mask[rows]
    left = lines.argmax(axis=1)
    right = mask.shape[1] - lines[:, ::-1].argmax(axis=1)  # one past the last pixel
    points = np.concatenate(
        [np.stack([xs, ys], axis=1) for xs in (left, right) for ys in (rows, rows + 1)]
    ).astype(np.float32)
    return from_corners(cv2.boxPoints(cv2.minAreaRect(points)))


def from_corners(corners: np.ndarray) -> OrientedBox:
    """The :class:`OrientedBox` of a rectangle's four corners in any order
    (e.g. a DOTA line's), with its sides and angle."""
    corners = np.asarray(corners, dtype=np.float64).reshape(4, 2)
    centre = corners.mean(axis=0)
    order = np.argsort(np.arctan2(corners[:, 1] - centre[1], corners[:, 0] - centre[0]))
    corners = corners[order]  # clockwise on screen (y points down)
    top = min(range(4), key=lambda i: (round(corners[i, 1], 6), corners[i, 0]))
    corners = np.roll(corners, -top, axis=0)
    first, second = corners[1] - corners[0], corners[2] - corners[1]
    a, b = float(np.hypot(*first)), float(np.hypot(*second))
    side = first if a >= b else second
    angle = math.degrees(math.atan2(side[1], side[0]))
    angle = (angle + 90) % 180 - 90
    return OrientedBox(corners, angle, max(a, b), min(a, b))
