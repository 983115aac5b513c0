"""Conversions between engine outputs and FiftyOne labels and files."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from typing import Any

import bson
import cv2
import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from .brain import quality_field
from .engine.class_names import ClassName, validate_class_names
from .engine.heatmap_store import (
    HEATMAP_SCALE,
    dequantize_heatmap,
    quantize_heatmap,
    read_heatmap_window,
)
from .engine.raster import RasterFile

BANDS_FIELD = "bands"
"""The sample field naming the 1-based bands the engine reads as R, G, B (one
band: grey), set by the GeoTIFF importer; absent or None: the engine's default."""

MAX_DETECTIONS_BYTES = 15 * 2**20
"""The most a sample's instances may take in the database: MongoDB refuses a
sample over 16 MB, and its other fields need room."""

DETECTION_BYTES = 1024
"""An upper bound on what a detection takes beside its mask's pixels (label,
box, score, ids, the mask's headers)."""


def heatmap_fields(class_names: Iterable[str], prefix: str) -> dict[str, str]:
    """``{class name: <prefix>_<class slug>}``, the run's heatmap fields.

    Raises:
        ValueError: the names fail
            :func:`~diffuprompter_plugin.engine.class_names.validate_class_names`,
            e.g. two share one slug (``storage tank`` and ``Storage_Tank``),
            so one of them would get no heatmap.
    """
    names = validate_class_names(class_names)
    return {name: f"{prefix}_{ClassName(name).slug}" for name in names}


def write_heatmap(
    heatmap: np.ndarray,
    path: str,
    geotiff: str | None = None,
    spread: np.ndarray | str | None = None,
) -> fo.Heatmap:
    """Writes a [0, 1] heatmap as a 16-bit PNG and returns its label.

    Args:
        heatmap: H x W float; for a scene labelled in tiles, its preview.
        path: the PNG's path.
        geotiff: a scene's full-resolution heatmap (moved next to ``path``,
            with the extension ``.tif``); the label's ``geotiff_path`` names it.
        spread: the noise draws' spread beside the heatmap (see
            :class:`~diffuprompter_plugin.engine.grounding.Grounded`), which
            ``draw_agreement`` is measured from: an H x W [0, 1] array,
            written quantised as the heatmap is to ``<path>_spread.png``, or
            a scene's spread GeoTIFF, moved to ``<path>_spread.tif``; the
            label's ``spread_path`` names it.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, quantize_heatmap(heatmap)):
        raise OSError(f"Cannot write heatmap '{path}'")
    label = fo.Heatmap(map_path=path, range=[0, HEATMAP_SCALE])
    stem = os.path.splitext(path)[0]
    if geotiff is not None:
        label["geotiff_path"] = stem + ".tif"
        shutil.move(geotiff, label["geotiff_path"])
    if isinstance(spread, str):
        label["spread_path"] = stem + "_spread.tif"
        shutil.move(spread, label["spread_path"])
    elif spread is not None:
        label["spread_path"] = write_spread(spread, stem + "_spread.png")
    if geotiff is not None:
        with contextlib.suppress(OSError):  # the engine's temporary folder, once empty
            os.rmdir(os.path.dirname(geotiff))
    return label


def write_spread(spread: np.ndarray, path: str) -> str:
    """Writes the draws' spread (H x W, [0, 1]) quantised as a heatmap is,
    as a 16-bit PNG; returns ``path``."""
    if not cv2.imwrite(path, quantize_heatmap(spread)):
        raise OSError(f"Cannot write the draws' spread '{path}'")
    return path


def scene_heatmap_path(label: fo.Heatmap) -> str | None:
    """The full-resolution GeoTIFF of a scene's heatmap label, else None."""
    return label.get_field("geotiff_path") if label.has_field("geotiff_path") else None


def label_type(
    samples: Any, field: str, needs: str, kinds: tuple[type, ...] = (fo.Detections,)
) -> type:
    """The label type of ``field`` in ``samples``, one of ``kinds``.

    Raises:
        ValueError: the field does not exist or holds another type, naming
            the field and what it holds, then ``needs`` (what the caller takes).
    """
    found = samples.get_field(field)
    kind = getattr(found, "document_type", None)
    if kind in kinds:
        return kind
    what = "does not exist" if found is None else f"holds {(kind or type(found)).__name__}"
    raise ValueError(f"Field '{field}' {what}: {needs}")


HEATMAP_FILES = ("map_path", "geotiff_path", "spread_path")
"""The attributes of a heatmap label that name its files: the PNG, a
scene's full-resolution GeoTIFF, and the draws' spread beside them."""


def heatmap_files(label: fo.Heatmap) -> list[str]:
    """The files a heatmap label names (see :data:`HEATMAP_FILES`)."""
    return [label[a] for a in HEATMAP_FILES if label.has_field(a) and label[a]]


def spread_path(label: fo.Heatmap) -> str | None:
    """The file of the draws' spread beside a heatmap label (a PNG, or a
    scene's GeoTIFF); None for runs stored before the quality signals."""
    return label.get_field("spread_path") if label.has_field("spread_path") else None


def read_spread(label: fo.Heatmap) -> np.ndarray | None:
    """The float32 [0, 1] spread beside a heatmap label of an image (not a
    scene: read its GeoTIFF window by window), None when it has none."""
    path = spread_path(label)
    if path is None:
        return None
    data = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if data is None:
        raise ValueError(f"The draws' spread '{path}' cannot be read")
    return dequantize_heatmap(data)


def read_heatmap(label: fo.Heatmap) -> np.ndarray:
    """The float32 [0, 1] heatmap of a stored label (a scene's at full
    resolution: read it window by window with
    :func:`~diffuprompter_plugin.engine.heatmap_store.read_heatmap_window`)."""
    geotiff = scene_heatmap_path(label)
    if geotiff is not None:
        return read_heatmap_window(geotiff)
    data = label.get_map()
    if data is None:
        raise ValueError(f"Heatmap file '{label.map_path}' cannot be read")
    return dequantize_heatmap(data)


def to_detections(instances: Iterable, width: int, height: int) -> fo.Detections:
    """``fo.Detections`` of instances (masks cropped to their boxes) of a
    ``width`` x ``height`` image, with relative boxes, ``confidence`` (the
    instance's score) and, as attributes, its quality signals (``sam_iou``,
    ``region_iou``, ``stability``, ``heat_contrast``, ``draw_agreement`` and
    ``quality``; see :mod:`~diffuprompter_plugin.engine.signals`) and the
    class and box the run drew (``drawn_label``, ``drawn_box``), which tell
    a person's later edit (:func:`~diffuprompter_plugin.verdicts.edited`).

    Raises:
        ValueError: the instances take more than :data:`MAX_DETECTIONS_BYTES`
            stored, more than a sample can hold.
    """
    detections = []
    for inst in instances:
        x0, y0, x1, y1 = inst.box
        box = [x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height]
        detections.append(
            fo.Detection(
                label=inst.label,
                bounding_box=box,
                mask=inst.mask,
                confidence=float(inst.score),
                **(inst.signals.attributes() if inst.signals is not None else {}),
                drawn_label=inst.label,
                drawn_box=list(box),
            )
        )
    labels = fo.Detections(detections=detections)
    _check_stored_size(labels)
    return labels


def store_instances(
    sample: fo.Sample, field: str, instances: Iterable, width: int, height: int
) -> None:
    """Sets ``field`` to the instances' detections (:func:`to_detections`)
    and :func:`quality_field` to their lowest ``quality`` (None without
    instances, or without signals); the sample is not saved.

    Raises:
        ValueError: from :func:`to_detections`; then neither field is set.
    """
    labels = to_detections(instances, width, height)
    qualities = [d["quality"] for d in labels.detections if d.has_field("quality")]
    sample[field] = labels
    sample[quality_field(field)] = min(qualities, default=None)


def _check_stored_size(labels: fo.Detections) -> None:
    """Raises ValueError when ``labels`` take more than
    :data:`MAX_DETECTIONS_BYTES` in the database. Masks are stored as
    zlib-compressed ``np.save`` bytes, at most about one byte a pixel, so
    only instances that might come near the limit are serialised to measure."""
    bound = sum(d.mask.size + DETECTION_BYTES for d in labels.detections)
    if bound <= MAX_DETECTIONS_BYTES:
        return
    size = len(bson.encode(labels.to_mongo()))
    if size > MAX_DETECTIONS_BYTES:
        raise ValueError(
            f"{len(labels.detections)} instances take {size / 2**20:.1f} MB, more than the "
            f"{MAX_DETECTIONS_BYTES / 2**20:g} MB a sample can hold (MongoDB's limit is 16 MB "
            "a sample): label the scene as smaller samples (split it into tiles) or raise "
            "the threshold"
        )


def sample_image(sample: fo.Sample) -> str | RasterFile:
    """What the engine reads for a sample: its file, with the bands of its
    :data:`BANDS_FIELD` when that holds a list of band indices (a field of
    that name holding anything else is the user's own, and is ignored)."""
    bands = sample[BANDS_FIELD] if sample.has_field(BANDS_FIELD) else None
    if isinstance(bands, (list, tuple)) and bands and all(type(b) is int for b in bands):
        return RasterFile(sample.filepath, tuple(bands))
    return sample.filepath


def sample_classes(sample: fo.Sample, class_field: str) -> list[str]:
    """Class names of a sample's Classification or Classifications field."""
    label = sample[class_field]
    if label is None:
        return []
    if isinstance(label, fo.Classifications):
        return list(dict.fromkeys(c.label for c in label.classifications if c.label))
    if isinstance(label, fo.Classification):
        return [label.label] if label.label else []
    raise ValueError(
        f"Field '{class_field}' holds {type(label).__name__}; expected Classification(s)"
    )


def require_metadata(samples: Any) -> None:
    """Computes image sizes where missing (COCO masks need them).

    Raises:
        ValueError: an image's size cannot be read (missing file or not an
            image), naming the files.
    """
    if not samples.exists("metadata", False).count():
        return
    samples.compute_metadata()
    unreadable = samples.exists("metadata", False).values("filepath")
    if unreadable:
        raise ValueError(
            f"Cannot read the size of {len(unreadable)} image(s), which COCO masks need: "
            f"the file is missing or not an image: {', '.join(unreadable[:5])}"
        )


def require_masks(view: Any, field: str, needs: str, path: str | None = None) -> None:
    """Raises a ValueError naming the field, the classes and a file where a
    label of ``field`` in ``view`` has no instance mask; ``needs`` says what
    needs the masks. ``path``: the labels' path (default
    ``<field>.detections``)."""
    path = path or f"{field}.detections"
    unmasked = view.filter_labels(field, ~F("mask").exists() & ~F("mask_path").exists())
    count = unmasked.count(path)
    if count:
        labels = ", ".join(sorted(unmasked.distinct(f"{path}.label")))
        raise ValueError(
            f"{count} objects of field '{field}' ({labels}) have no instance mask, e.g. in "
            f"'{unmasked.first().filepath}'; {needs}"
        )
