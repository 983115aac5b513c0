"""Ranking pseudo-labels by any signal: AP with a detection attribute in
place of ``confidence``, and the signals side by side on the same labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fiftyone import ViewField as F

from .verdicts import labels_path

SIGNALS = (
    "confidence",
    "quality",
    "sam_iou",
    "region_iou",
    "stability",
    "heat_contrast",
    "draw_agreement",
)
"""The per-instance signals a run records (README, "Review and verified export")."""


def ranked_view(samples: Any, pred_field: str, score_field: str) -> Any:
    """``samples`` with each detection's ``confidence`` replaced, in the
    view only, by its ``score_field`` attribute, so that FiftyOne's and
    pycocotools' AP rank by that signal. The stored confidence is untouched.

    Raises:
        ValueError: a detection lacks ``score_field``, naming the signal,
            the field and the count.
    """
    if score_field == "confidence":
        return samples
    path = labels_path(samples, pred_field)
    missing = samples.count(path) - samples.count(f"{path}.{score_field}")
    if missing:
        raise ValueError(
            f"{missing} detections of '{pred_field}' have no '{score_field}'; ranking by a "
            "signal needs it on every detection"
        )
    return samples.set_field(f"{path}.confidence", F(score_field))


def compare_signals(
    samples: Any,
    pred_field: str,
    gt_field: str,
    signals: Sequence[str] = SIGNALS,
    class_map: Mapping[str, str] | None = None,
    max_dets: int | None = None,
) -> list[dict[str, Any]]:
    """Mask AP (pycocotools) of the same labels ranked by each signal: how
    well each orders true positives before false ones. Nothing is stored.

    Args:
        signals: detection attributes to rank by; those absent from some
            detection are reported with ``missing`` instead of AP.

    Returns:
        one row per signal: ``{"signal", "AP", "AP50", "AP75", "per_class"}``
        or ``{"signal", "missing": n}``.
    """
    from .coco import coco_metrics
    from .evaluation import check_inputs, default_max_dets

    view, classes, _ = check_inputs(samples, pred_field, gt_field, class_map)
    max_dets = default_max_dets(samples) if max_dets is None else int(max_dets)
    path = labels_path(samples, pred_field)
    rows = []
    for signal in signals:
        missing = view.count(path) - view.count(f"{path}.{signal}")
        if missing:
            rows.append({"signal": signal, "missing": missing})
            continue
        ranked = ranked_view(view, pred_field, signal)
        metrics = coco_metrics(ranked, pred_field, gt_field, classes, max_dets)
        row = {"signal": signal, **{m: round(metrics[m], 4) for m in ("AP", "AP50", "AP75")}}
        row["per_class"] = {c: round(v, 4) for c, v in metrics["per_class"].items()}
        rows.append(row)
    return rows
