"""COCO polygons rasterised exactly as pycocotools does, cropped to a window.

pycocotools (``frPyObjects`` + ``decode``), and so FiftyOne's COCO importer
and every COCO evaluation tool, turn a polygon into pixels with its own rule:
vertices are scaled by 5, rounded, traced and sampled at pixel centres. It is
not OpenCV's ``fillPoly`` (which fills vertices inclusively: a 20 x 20 square
becomes 21 x 21), and it is not translation-invariant for non-integer
vertices (``5 * x`` rounds differently once ``x`` is shifted), so a polygon
is always rasterised in full-image coordinates and the window is cut out of
its run-length encoding, never out of a shifted polygon.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def polygon_rle(shapes: list[np.ndarray], width: int, height: int) -> dict:
    """Compressed COCO RLE of the union of polygons on a ``height x width``
    image, as ``pycocotools.coco.COCO.annToRLE`` builds it.

    Args:
        shapes: N x 2 arrays of (x, y) vertices in image pixels.
    """
    rles = mask_utils.frPyObjects([s.ravel().tolist() for s in shapes], height, width)
    return mask_utils.merge(rles)


def run_lengths(rle: dict) -> np.ndarray:
    """Run lengths (background first, column-major) of a compressed RLE.

    pycocotools stores them as ASCII: each value in 5-bit groups, low first,
    offset by 48, bit 0x20 meaning "more groups follow", bit 0x10 of the
    last group the sign; from the third value on, each is a difference from
    the value two places before.
    """
    counts = rle["counts"]
    text = counts.encode("ascii") if isinstance(counts, str) else counts
    values: list[int] = []
    value = shift = 0
    for char in text:
        group = char - 48
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:
            value -= 1 << shift
        if len(values) > 2:
            value += values[-2]
        values.append(value)
        value = shift = 0
    return np.asarray(values, dtype=np.int64)


def window_mask(rle: dict, window: tuple[int, int, int, int]) -> np.ndarray:
    """The bool ``(y1 - y0) x (x1 - x0)`` part of a full-image RLE inside
    window (x0, y0, x1, y1), decoded only over the window's columns."""
    x0, y0, x1, y1 = window
    height = rle["size"][0]
    bounds = np.concatenate([[0], np.cumsum(run_lengths(rle))])
    starts, ends = bounds[1:-1:2], bounds[2::2]  # foreground runs, flat column-major
    first, last = x0 * height, x1 * height
    starts = np.clip(starts, first, last) - first
    ends = np.clip(ends, first, last) - first
    edges = np.zeros(last - first + 1, np.int8)
    np.add.at(edges, starts, 1)
    np.add.at(edges, ends, -1)
    columns = np.cumsum(edges[:-1], dtype=np.int8).reshape(x1 - x0, height)
    return columns.T[y0:y1].astype(bool)
