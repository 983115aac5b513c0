"""Evaluation of pseudo-labels against ground truth in the paper's terms, and
per-class threshold calibration from stored heatmaps."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from .coco import COCO_MAX_DETS, METRIC_NAMES, coco_metrics
from .engine.class_names import match_key
from .importers.categories import CATEGORIES
from .labels import require_masks, require_metadata

DEFAULT_CLASS_MAP = {
    **{c: c for c in CATEGORIES},
    "plane": "airplane",
    "small vehicle": "vehicle",
    "large vehicle": "vehicle",
    "playground": "ground track field",
}
"""Ground-truth class -> pseudo-label class, matched on the names' matching
keys (:func:`~diffuprompter_plugin.engine.class_names.match_key`:
``Ground_Track_Field``, ``storage_tank`` and ``Small_Vehicle`` included)."""

CALIBRATION_THRESHOLDS = tuple(np.round(np.arange(0.2, 0.71, 0.05), 2))


def resolve_class_map(
    gt_labels: Sequence[str],
    class_map: Mapping[str, str] | None = None,
    pred_labels: Sequence[str] = (),
) -> tuple[dict[str, str], list[str]]:
    """Maps each ground-truth label present onto a pseudo-label class.

    Args:
        gt_labels: the distinct labels of the ground-truth field.
        class_map: ``{gt name: pseudo-label name}`` added to (and overriding)
            :data:`DEFAULT_CLASS_MAP` and the same names; names match on
            their matching keys.
        pred_labels: the pseudo-label classes: a ground-truth label with the
            same name (matching key) maps onto its class, before
            :data:`DEFAULT_CLASS_MAP`.

    Returns:
        (``{gt label: pseudo class}``, ground-truth labels with no pseudo class).

    Raises:
        ValueError: ``class_map`` names a class absent from the ground truth.
    """
    table = {match_key(k): v for k, v in DEFAULT_CLASS_MAP.items()}
    table.update({match_key(label): label for label in pred_labels})
    present = {match_key(label): label for label in gt_labels}
    for gt_name, pred_name in (class_map or {}).items():
        if match_key(gt_name) not in present:
            raise ValueError(
                f"class_map names ground-truth class '{gt_name}', which the ground "
                f"truth does not have ({sorted(gt_labels)})"
            )
        table[match_key(gt_name)] = pred_name
    mapping = {label: table[key] for key, label in present.items() if key in table}
    unmatched = sorted(label for key, label in present.items() if key not in table)
    return mapping, unmatched


def mapped_view(samples: Any, gt_field: str, mapping: Mapping[str, str]) -> Any:
    """The collection with ground-truth labels renamed to pseudo-label classes
    and unmatched ground-truth classes filtered out."""
    return samples.filter_labels(
        gt_field, F("label").is_in(list(mapping)), only_matches=False
    ).map_labels(gt_field, dict(mapping))


def default_max_dets(samples: Any) -> int:
    """The dataset's detections-per-image convention: ``info["max_dets"]``
    (1000 for iSAID imports, as in its devkit), else COCO's 100."""
    return int(samples._dataset.info.get("max_dets", COCO_MAX_DETS))


def check_inputs(
    samples: Any, pred_field: str, gt_field: str, class_map: Mapping[str, str] | None
) -> tuple[Any, list[str], list[str]]:
    """Everything evaluation needs, checked before anything is stored.

    Returns:
        (the mapped view, pseudo-label classes, unmatched ground-truth classes).
    """
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
    gt_labels = samples.distinct(f"{gt_field}.detections.label")
    pred_labels = samples.distinct(f"{pred_field}.detections.label")
    mapping, unmatched = resolve_class_map(gt_labels, class_map, pred_labels)
    if not mapping:
        raise ValueError(
            f"No ground-truth class of '{gt_field}' ({', '.join(gt_labels)}) maps onto a "
            "pseudo-label class; name them in class_map={'ground-truth name': "
            "'pseudo-label name'}"
        )
    require_metadata(samples)
    view = mapped_view(samples, gt_field, mapping)
    classes = sorted(set(mapping.values()))
    for field in (gt_field, pred_field):
        evaluated = view.filter_labels(field, F("label").is_in(list(classes)))
        require_masks(evaluated, field, "mask AP needs a mask on every object")
    return view, classes, unmatched


def evaluate_pseudo_labels(
    samples: Any,
    pred_field: str,
    gt_field: str,
    eval_key: str,
    class_map: Mapping[str, str] | None = None,
    max_dets: int | None = None,
    pr_curves_path: str | os.PathLike | bool | None = None,
    progress: bool | Callable | None = None,
    score_field: str = "confidence",
) -> dict[str, Any]:
    """Mask AP of pseudo-labels, with pycocotools and FiftyOne's COCO evaluation.

    pycocotools runs on RLE of full-image masks. AP_S/AP_M/AP_L bin ground
    truth by its ``area`` attribute where it has one (the annotation file's,
    which the NWPU and full-scene iSAID imports keep), as pycocotools does
    on the official JSON, else by mask pixel count; detections by mask
    pixel count. FiftyOne's ``evaluate_detections(method="coco",
    use_masks=True, compute_mAP=True)``, which has no area ranges, then
    runs as a stored evaluation run under ``eval_key`` (the App's evaluation
    views work), on the ground truth renamed by the class map. Both keep
    ``max_dets`` detections per image and class and report AP, AP50 and
    AP75; pycocotools' figures lead, because FiftyOne ranks tied scores
    differently (README, "Evaluating pseudo-labels").

    Every input is checked first: on bad input nothing is stored (no
    evaluation run, no ``<eval_key>_tp/_fp/_fn`` fields).

    Args:
        max_dets: detections kept per image and class; by default the
            dataset's convention (:func:`default_max_dets`).
        pr_curves_path: where to write the IoU-0.5 PR curves as an HTML
            page; True picks ``<dataset dir>/__diffuprompter__/<dataset
            id>/<eval_key>_pr.html`` (never a path built from the dataset's
            name); None or False writes nothing.
        score_field: the detection attribute that ranks predictions
            (``confidence``, ``quality`` or another signal; see
            :func:`~.ranking.ranked_view`); the stored confidence is kept.

    Returns:
        ``{"eval_key", "max_dets", "classes", "unmatched_gt_classes",
        "fiftyone", "pycocotools", "agree", "table", "pr_curves",
        "pr_curves_file", "score_field"}``; ``agree`` says whether AP, AP50 and AP75 match
        to 1e-6, ``table`` is :func:`report_rows`, ``pr_curves`` the plotly
        traces and ``pr_curves_file`` the page written (or None).

    Raises:
        ValueError: missing or empty fields, predictions without confidence,
            objects without masks, ground-truth classes that map onto no
            pseudo-label class, unreadable images, or a class map naming
            unknown classes; each names the field, class or file.
    """
    from .ranking import ranked_view

    view, classes, unmatched = check_inputs(samples, pred_field, gt_field, class_map)
    view = ranked_view(view, pred_field, score_field)
    max_dets = default_max_dets(samples) if max_dets is None else int(max_dets)
    coco = coco_metrics(view, pred_field, gt_field, classes, max_dets)
    try:
        results = view.evaluate_detections(
            pred_field,
            gt_field,
            eval_key=eval_key,
            method="coco",
            use_masks=True,
            compute_mAP=True,
            classes=classes,
            max_preds=max_dets,
            progress=progress,
        )
    except BaseException:
        if eval_key in samples._dataset.list_evaluations():
            samples._dataset.delete_evaluation(eval_key)
        raise
    fo_metrics = fiftyone_metrics(results, classes)
    agree = all(abs(fo_metrics[m] - coco[m]) < 1e-6 for m in ("AP", "AP50", "AP75"))
    report = {
        "eval_key": eval_key,
        "max_dets": max_dets,
        "classes": classes,
        "unmatched_gt_classes": unmatched,
        "fiftyone": fo_metrics,
        "pycocotools": coco,
        "agree": agree,
        "pr_curves": pr_curves(view, eval_key),
        "pr_curves_file": None,
        "score_field": score_field,
    }
    report["table"] = report_rows(report)
    if pr_curves_path is True:
        pr_curves_path = os.path.join(
            fo.config.default_dataset_dir,
            "__diffuprompter__",
            str(samples._dataset._doc.id),
            f"{eval_key}_pr.html",
        )
    if pr_curves_path:
        report["pr_curves_file"] = save_pr_curves(view, eval_key, pr_curves_path)
    return report


def iou_index(results: Any, iou: float) -> int:
    """The index of the IoU threshold ``iou`` in COCO evaluation results'
    ``iou_threshs`` (the first axis of their ``precision``, which is
    ``num_iou_threshs x num_classes x num_recall``), matched to within 1e-6.

    Raises:
        ValueError: the evaluation has no such threshold.
    """
    threshs = np.asarray(results.iou_threshs, dtype=float)
    matches = np.flatnonzero(np.abs(threshs - iou) < 1e-6)
    if matches.size == 0:
        raise ValueError(f"IoU threshold {iou} is not one of the evaluation's: {threshs.tolist()}")
    return int(matches[0])


def fiftyone_metrics(results: Any, classes: Sequence[str]) -> dict[str, Any]:
    """AP, AP50, AP75 and per-class AP from FiftyOne's COCO results."""

    def ap_at(iou: float | None) -> float:
        precision = results.precision
        if iou is not None:
            index = iou_index(results, iou)
            precision = precision[index : index + 1]
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
    require_metadata(done)
    gt_labels = done.distinct(f"{gt_field}.detections.label")
    mapping, _ = resolve_class_map(gt_labels, class_map, list(config.heatmap_fields))
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
            metrics = coco_metrics(view, scratch, gt_field, classes, default_max_dets(samples))
            sweep[float(gamma)] = metrics["per_class"]
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
    index = iou_index(results, iou)
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
