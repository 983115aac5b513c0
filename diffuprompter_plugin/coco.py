"""COCO instance-segmentation JSON from FiftyOne masks, and pycocotools metrics.

Masks are rebuilt at full image size and run-length encoded. An object's
area, which pycocotools' small/medium/large ranges bin by, is its ``area``
attribute where it has one (the annotation file's, as pycocotools takes it),
else its mask's pixel count.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from typing import Any

import fiftyone as fo
import numpy as np
from pycocotools import mask as mask_utils

METRIC_NAMES = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")

COCO_MAX_DETS = 100
"""Detections kept per image and class by COCO's evaluation (``maxDets``)."""


def full_mask(detection: fo.Detection, width: int, height: int) -> np.ndarray:
    """The detection's instance mask placed on a ``height x width`` canvas."""
    mask = detection.get_mask()
    if mask is None:
        raise ValueError(f"Detection {detection.id} ({detection.label}) has no mask")
    x, y, _, _ = detection.bounding_box
    x0, y0 = int(round(x * width)), int(round(y * height))
    canvas = np.zeros((height, width), dtype=bool)
    crop = mask.astype(bool)[: height - y0, : width - x0]
    canvas[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
    return canvas


def encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a bool mask, with ``counts`` as a JSON-safe string."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def to_coco(
    samples: Any, field: str, categories: Sequence[str], scores: bool
) -> dict[str, list[dict[str, Any]]]:
    """COCO ``images``, ``annotations`` and ``categories`` of a Detections
    field; labels outside ``categories`` are left out. An annotation's
    ``area`` is the object's ``area`` attribute where it has one (the
    annotation file's), else its mask's pixel count.

    Raises:
        ValueError: a sample lacks metadata, or (with ``scores``) a detection
            lacks its confidence.
    """
    category_ids = {name: i + 1 for i, name in enumerate(categories)}
    images, annotations = [], []
    for image_id, (filepath, metadata, labels) in enumerate(
        zip(*samples.values(["filepath", "metadata", field]), strict=True), start=1
    ):
        if metadata is None or not metadata.width:
            raise ValueError(f"Sample '{filepath}' has no metadata: run compute_metadata()")
        width, height = metadata.width, metadata.height
        images.append({"id": image_id, "file_name": filepath, "width": width, "height": height})
        for det in labels.detections if labels is not None else []:
            if det.label not in category_ids:
                continue
            rle = encode(full_mask(det, width, height))
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_ids[det.label],
                "segmentation": rle,
                "area": _area(det, rle),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": int(getattr(det, "iscrowd", None) or 0),
            }
            if scores:
                if det.confidence is None:
                    raise ValueError(
                        f"Prediction {det.id} ({det.label}) in field '{field}' of "
                        f"'{filepath}' has no confidence"
                    )
                ann["score"] = float(det.confidence)
            annotations.append(ann)
    cats = [{"id": i, "name": name} for name, i in category_ids.items()]
    return {"images": images, "annotations": annotations, "categories": cats}


def _area(detection: fo.Detection, rle: dict[str, Any]) -> float:
    """The object's ``area`` attribute where it has one (the annotation
    file's, kept by the importers, as pycocotools takes it), else its
    mask's pixel count."""
    area = getattr(detection, "area", None)
    return float(area) if isinstance(area, (int, float)) else int(mask_utils.area(rle))


def detection_results(samples: Any, field: str, categories: Sequence[str]) -> list[dict[str, Any]]:
    """A predictions field as pycocotools ``loadRes`` input: RLE and score,
    without ``bbox``. With a ``bbox``, ``loadRes`` sets each detection's area
    to the box's w x h, which bins thin or diagonal masks into the wrong
    AP_S/M/L range (Detectron2 and MMDetection drop it for the same reason);
    without it, the area is the mask's pixel count (pycocotools computes it
    from the RLE, whatever ``area`` the results give)."""
    annotations = to_coco(samples, field, categories, scores=True)["annotations"]
    return [{k: v for k, v in ann.items() if k != "bbox"} for ann in annotations]


def coco_metrics(
    samples: Any,
    pred_field: str,
    gt_field: str,
    categories: Sequence[str],
    max_dets: int = COCO_MAX_DETS,
) -> dict[str, Any]:
    """pycocotools ``segm`` metrics: AP, AP50, AP75, AP_S, AP_M, AP_L, and
    AP per class (-1 where a class has no ground truth), keeping the
    ``max_dets`` highest-scored detections per image and class."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = to_coco(samples, gt_field, categories, scores=False)
    gt.createIndex()
    detections = detection_results(samples, pred_field, categories)
    if not detections:  # nothing predicted: AP 0 where there is ground truth
        present = {a["category_id"] for a in gt.dataset["annotations"]}
        per_class = {n: 0.0 if i + 1 in present else -1.0 for i, n in enumerate(categories)}
        return {**dict.fromkeys(METRIC_NAMES, 0.0), "per_class": per_class}
    evaluator = COCOeval(gt, gt.loadRes(detections), iouType="segm")
    evaluator.params.maxDets = [1, 10, max_dets]
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        evaluator.evaluate()
        evaluator.accumulate()
    metrics = summary(evaluator.eval["precision"], evaluator.params.iouThrs)
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # T x R x K, all areas, max_dets
    per_class = {}
    for k, name in enumerate(categories):
        values = precision[:, :, k]
        per_class[name] = float(values[values > -1].mean()) if (values > -1).any() else -1.0
    metrics["per_class"] = per_class
    return metrics


def summary(precision: np.ndarray, iou_thresholds: np.ndarray) -> dict[str, float]:
    """AP, AP50, AP75, AP_S, AP_M, AP_L at the last ``maxDets``, as
    ``COCOeval.summarize`` computes them (-1 where nothing is defined).

    ``summarize`` itself is not used: its overall AP is taken at a fixed 100
    detections and is -1 whenever ``maxDets`` does not include 100.

    Args:
        precision: ``COCOeval.eval["precision"]``, T x R x K x A x M
            (IoU thresholds, recall points, classes, area ranges all/S/M/L,
            maxDets).
        iou_thresholds: the T IoU thresholds.
    """

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(values.mean()) if values.size else -1.0

    at = {iou: np.flatnonzero(np.isclose(iou_thresholds, iou)) for iou in (0.5, 0.75)}
    return {
        "AP": mean(precision[..., 0, -1]),
        "AP50": mean(precision[at[0.5], ..., 0, -1]),
        "AP75": mean(precision[at[0.75], ..., 0, -1]),
        "AP_S": mean(precision[..., 1, -1]),
        "AP_M": mean(precision[..., 2, -1]),
        "AP_L": mean(precision[..., 3, -1]),
    }


def export_coco(samples: Any, pred_field: str, path: str | os.PathLike) -> dict[str, int]:
    """Writes a Detections field as COCO instance-segmentation JSON (RLE,
    areas as :func:`to_coco` gives them, ``score`` from confidence), for
    training elsewhere.

    Returns:
        counts of images, annotations and categories written.
    """
    categories = sorted(samples.distinct(f"{pred_field}.detections.label"))
    data = to_coco(samples, pred_field, categories, scores=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)
    return {k: len(v) for k, v in data.items()}
