"""Connected regions of a binary map and the box and point prompts for SAM."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .raster import Box


@dataclass(frozen=True)
class Region:
    """One connected region of a binary map, with its SAM prompts."""

    mask: np.ndarray
    box: Box
    point: tuple[int, int]


def components(mask: np.ndarray, min_area: int) -> list[np.ndarray]:
    """8-connected components of ``mask`` with at least ``min_area`` pixels,
    largest first."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8
    )
    keep = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    keep.sort(key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    return [labels == i for i in keep]


def mask_box(mask: np.ndarray) -> Box:
    """The min box of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """The region's centroid (x, y), snapped to the nearest region pixel when
    it falls outside (rings, bridges, harbours)."""
    ys, xs = np.nonzero(mask)
    cx, cy = int(round(xs.mean())), int(round(ys.mean()))
    if mask[cy, cx]:
        return cx, cy
    nearest = np.argmin((xs - cx) ** 2 + (ys - cy) ** 2)
    return int(xs[nearest]), int(ys[nearest])


def regions(binary: np.ndarray, min_area: int) -> list[Region]:
    """Prompts for every connected region of the binarised map."""
    return [Region(m, mask_box(m), interior_point(m)) for m in components(binary, min_area)]
