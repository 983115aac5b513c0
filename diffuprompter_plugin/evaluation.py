"""Evaluation of pseudo-labels against ground truth in the paper's terms, and
per-class threshold calibration from stored heatmaps."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from fiftyone import ViewField as F

from .coco import METRIC_NAMES, coco_metrics
from .importers.categories import CATEGORIES, normalize

DEFAULT_CLASS_MAP = {
    **{c: c for c in CATEGORIES},
    "plane": "airplane",
    "small vehicle": "vehicle",
    "large vehicle": "vehicle",
    "playground": "ground track field",
}
"""Ground-truth class -> pseudo-label class, matched on normalised names
(``Ground_Track_Field``, ``storage_tank`` and ``Small_Vehicle`` included)."""

CALIBRATION_THRESHOLDS = tuple(np.round(np.arange(0.2, 0.71, 0.05), 2))


def resolve_class_map(
    gt_labels: Sequence[str], class_map: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """Maps each ground-truth label present onto a pseudo-label class.

    Args:
        gt_labels: the distinct labels of the ground-truth field.
        class_map: ``{gt name: pseudo-label name}`` added to (and overriding)
            :data:`DEFAULT_CLASS_MAP`; names match after normalisation.

    Returns:
        (``{gt label: pseudo class}``, ground-truth labels with no pseudo class).

    Raises:
        ValueError: ``class_map`` names a class absent from the ground truth.
    """
    table = {normalize(k): v for k, v in DEFAULT_CLASS_MAP.items()}
    present = {normalize(label): label for label in gt_labels}
    for gt_name, pred_name in (class_map or {}).items():
        if normalize(gt_name) not in present:
            raise ValueError(
                f"class_map names ground-truth class '{gt_name}', which the ground "
                f"truth does not have ({sorted(gt_labels)})"
            )
        table[normalize(gt_name)] = pred_name
    mapping = {label: table[key] for key, label in present.items() if key in table}
    unmatched = sorted(label for key, label in present.items() if key not in table)
    return mapping, unmatched


def mapped_view(samples: Any, gt_field: str, mapping: Mapping[str, str]) -> Any:
    """The collection with ground-truth labels renamed to pseudo-label classes
    and unmatched ground-truth classes filtered out."""
    return samples.filter_labels(
        gt_field, F("label").is_in(list(mapping)), only_matches=False
    ).map_labels(gt_field, dict(mapping))


def _ensure_metadata(samples: Any) -> None:
    """Computes image sizes where missing (COCO masks need them)."""
    if samples.exists("metadata", False).count():
        samples.compute_metadata()


def _check_fields(samples: Any, pred_field: str, gt_field: str) -> list[str]:
    for field in (pred_field, gt_field):
        if not samples.has_field(field):
            raise ValueError(f"Field '{field}' does not exist")
    if samples.count(f"{gt_field}.detections") == 0:
        raise ValueError(f"Ground-truth field '{gt_field}' holds no objects")
    if samples.count(f"{pred_field}.detections") == 0:
        raise ValueError(f"Prediction field '{pred_field}' holds no objects")
    missing = samples.count(f"{pred_field}.detections") - samples.count(
        f"{pred_field}.detections.confidence"
    )
    if missing:
        raise ValueError(
            f"{missing} predictions in '{pred_field}' have no confidence; AP needs a score "
            "for every prediction"
        )
    _ensure_metadata(samples)
    return samples.distinct(f"{gt_field}.detections.label")


def evaluate_pseudo_labels(
    samples: Any,
    pred_field: str,
    gt_field: str,
    eval_key: str,
    class_map: Mapping[str, str] | None = None,
    progress: bool | Callable | None = None,
) -> dict[str, Any]:
    """Mask AP of pseudo-labels, with FiftyOne's COCO evaluation and pycocotools.

    FiftyOne's ``evaluate_detections(method="coco", use_masks=True,
    compute_mAP=True)`` runs as a stored evaluation run under ``eval_key``
    (the App's evaluation views work), on the ground truth renamed by the
    class map. pycocotools adds AP_S/AP_M/AP_L on RLE of full-image masks
    with true pixel areas; both report AP, AP50 and AP75.

    Returns:
        ``{"classes", "unmatched_gt_classes", "fiftyone", "pycocotools",
        "agree"}``; ``agree`` says whether AP, AP50 and AP75 match to 1e-6.

    Raises:
        ValueError: missing or empty fields, predictions without confidence,
            or a class map naming unknown classes.
    """
    gt_labels = _check_fields(samples, pred_field, gt_field)
    mapping, unmatched = resolve_class_map(gt_labels, class_map)
    view = mapped_view(samples, gt_field, mapping)
    classes = sorted(set(mapping.values()))
    results = view.evaluate_detections(
        pred_field,
        gt_field,
        eval_key=eval_key,
        method="coco",
        use_masks=True,
        compute_mAP=True,
        classes=classes,
        progress=progress,
    )
    fo_metrics = fiftyone_metrics(results, classes)
    coco = coco_metrics(view, pred_field, gt_field, classes)
    agree = all(abs(fo_metrics[m] - coco[m]) < 1e-6 for m in ("AP", "AP50", "AP75"))
    return {
        "eval_key": eval_key,
        "classes": classes,
        "unmatched_gt_classes": unmatched,
        "fiftyone": fo_metrics,
        "pycocotools": coco,
        "agree": agree,
    }


def fiftyone_metrics(results: Any, classes: Sequence[str]) -> dict[str, Any]:
    """AP, AP50, AP75 and per-class AP from FiftyOne's COCO results."""

    def ap_at(iou: float | None) -> float:
        precision = results.precision
        if iou is not None:
            precision = precision[results._get_iou_thresh_inds(iou)]
        per_class = [precision[:, k] for k in range(precision.shape[1])]
        values = [p.mean() for p in per_class if (p > -1).all()]
        return float(np.mean(values)) if values else -1.0

    return {
        "AP": ap_at(None),
        "AP50": ap_at(0.5),
        "AP75": ap_at(0.75),
        "per_class": {c: float(results.mAP(classes=[c])) for c in classes},
    }


def calibrate_thresholds(
    samples: Any,
    brain_key: str,
    gt_field: str,
    output: str | os.PathLike,
    thresholds: Sequence[float] = CALIBRATION_THRESHOLDS,
    class_map: Mapping[str, str] | None = None,
    prompter: Any = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Sweeps the threshold on a labelled subset using the run's stored
    heatmaps (SAM reruns, diffusion does not) and writes the best threshold
    per class to ``output`` as ``{"thresholds": {...}, "ap": {...},
    "sweep": {...}}``, which :func:`rethreshold_pseudo_labels` accepts.

    Returns:
        the written dict; ``sweep`` is ``{threshold: {class: AP}}``.
    """
    from .brain import stored_config
    from .rethreshold import rethreshold_pseudo_labels

    config = stored_config(samples, brain_key)
    done = samples.exists(config.pred_field)
    if gt_field not in done.get_field_schema():
        raise ValueError(f"Ground-truth field '{gt_field}' does not exist")
    _ensure_metadata(done)
    mapping, _ = resolve_class_map(done.distinct(f"{gt_field}.detections.label"), class_map)
    classes = sorted(set(mapping.values()) & set(config.heatmap_fields))
    if not classes:
        raise ValueError("The run's classes and the ground truth's classes do not overlap")
    prompter = config.load_prompter(device=device, prompter=prompter)
    view = mapped_view(done, gt_field, mapping)
    scratch = f"calibration_{brain_key}"
    if samples._dataset.has_sample_field(scratch):
        raise ValueError(f"Field '{scratch}' exists; calibration needs it as scratch space")
    sweep = {}
    try:
        for gamma in thresholds:
            rethreshold_pseudo_labels(
                done,
                brain_key,
                scratch,
                thresholds=float(gamma),
                prompter=prompter,
                progress=False,
            )
            sweep[float(gamma)] = coco_metrics(view, scratch, gt_field, classes)["per_class"]
    finally:
        if samples._dataset.has_sample_field(scratch):
            samples._dataset.delete_sample_field(scratch)
    best = {c: max(sweep, key=lambda g, c=c: sweep[g][c]) for c in classes}
    report = {
        "thresholds": best,
        "ap": {c: sweep[best[c]][c] for c in classes},
        "sweep": {str(g): v for g, v in sweep.items()},
    }
    with open(output, "w") as f:
        json.dump(report, f, indent=2)
    return report


def pr_curves(samples: Any, eval_key: str, iou: float = 0.5) -> list[dict[str, Any]]:
    """Precision-recall curves per class of a stored evaluation at one IoU,
    as plotly scatter traces."""
    results = samples.load_evaluation_results(eval_key)
    index = results._get_iou_thresh_inds(iou)[0]
    traces = []
    for k, name in enumerate(results.classes):
        precision = results.precision[index, k]
        if (precision > -1).all():
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": str(name),
                    "x": results.recall.tolist(),
                    "y": precision.tolist(),
                }
            )
    return traces


def save_pr_curves(samples: Any, eval_key: str, path: str | os.PathLike) -> str:
    """Writes the IoU-0.5 PR curves of an evaluation as a standalone HTML page."""
    import plotly.graph_objects as go

    figure = go.Figure(data=pr_curves(samples, eval_key))
    figure.update_layout(
        title=f"PR curves, IoU 0.5 ({eval_key})", xaxis_title="recall", yaxis_title="precision"
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.write_html(str(path), include_plotlyjs=True)
    return str(path)


def report_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Table rows (overall, then one per class) for display."""
    fo_m, coco = report["fiftyone"], report["pycocotools"]
    rows = [
        {
            "class": "all",
            **{m: round(coco[m], 4) for m in METRIC_NAMES},
            "AP (FiftyOne)": round(fo_m["AP"], 4),
        }
    ]
    for name in report["classes"]:
        rows.append(
            {
                "class": name,
                "AP": round(coco["per_class"][name], 4),
                "AP (FiftyOne)": round(fo_m["per_class"][name], 4),
            }
        )
    return rows
