"""Oriented boxes of stored instances, computed from their masks when exported.

An instance's oriented box is not stored on its ``fo.Detection``: it is
computed from the exact mask each time it is exported
(:func:`detection_oriented_box`). So it always matches the mask, after
re-thresholding or a mask edited by hand, and no stored run needs a
migration; it costs well under a millisecond per instance.
"""

from __future__ import annotations

from typing import Any

import fiftyone as fo
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from rasterio import Affine

from .engine.oriented_boxes import OrientedBox, from_corners, oriented_box

COLUMNS = {
    "label": "object",
    "score": "float64",
    "angle": "float64",
    "length_px": "float64",
    "width_px": "float64",
    "sample_id": "object",
    "filepath": "object",
    "detection_id": "object",
}
"""The attribute table of an oriented-box layer, in order."""


def detection_oriented_box(detection: fo.Detection, width: int, height: int) -> OrientedBox:
    """The oriented box of a detection in the pixels of its ``width`` x
    ``height`` image: the minimum-area rectangle of its mask (cropped to
    its box, placed at the box's rounded top-left pixel, as the masks are
    placed everywhere else), or its axis-aligned box when it has no mask."""
    x, y, w, h = detection.bounding_box
    col, row = int(round(x * width)), int(round(y * height))
    mask = detection.get_mask()
    box = oriented_box(mask) if mask is not None else None
    if box is not None:
        return box.shifted(col, row)
    x0, y0, x1, y1 = x * width, y * height, (x + w) * width, (y + h) * height
    return from_corners([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def oriented_features(
    sample: Any, pred_field: str, crs: Any, transform: Affine
) -> gpd.GeoDataFrame:
    """One Polygon row per instance of ``pred_field``: its oriented box
    through the scene's pixel-corner ``transform``, in ``crs`` (as
    :func:`~diffuprompter_plugin.geo.georeference` gives them), with the
    attributes of :data:`COLUMNS` (``angle``, ``length_px`` and
    ``width_px`` in the scene's pixels, see
    :class:`~diffuprompter_plugin.engine.oriented_boxes.OrientedBox`)."""
    width, height = sample.metadata.width, sample.metadata.height
    labels = sample[pred_field]
    rows, geometries = [], []
    for det in labels.detections if labels is not None else []:
        box = detection_oriented_box(det, width, height)
        corners = [transform * tuple(c) for c in box.corners]
        geometries.append(shapely.orient_polygons(shapely.Polygon(corners)))
        rows.append(
            {
                "label": det.label,
                "score": np.nan if det.confidence is None else float(det.confidence),
                "angle": box.angle,
                "length_px": box.length,
                "width_px": box.width,
                "sample_id": sample.id,
                "filepath": sample.filepath,
                "detection_id": det.id,
            }
        )
    table = pd.DataFrame(rows, columns=list(COLUMNS)).astype(COLUMNS)
    return gpd.GeoDataFrame(table, geometry=gpd.GeoSeries(geometries, crs=crs))
