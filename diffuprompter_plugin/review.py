"""The review loop on a pseudo-label field: what still needs a person, the
automatic verdicts on confident labels, and where a field stands.

Verdicts are label tags (:mod:`.verdicts`); every function here reads them
as the App writes them, and no function changes a label that has one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from fiftyone import ViewField as F

from .calibration import DEFAULT_BINS, AcceptanceCalibration, stratified_draw
from .verdicts import (
    ACCEPTED,
    AUTO_ACCEPTED,
    AUTO_REJECTED,
    PERSON_ACCEPTED,
    PERSON_REJECTED,
    REJECTED,
    VERDICT_NAMES,
    LabelTable,
    check_classes,
    labels_path,
    person_made,
    unreviewed,
)

logger = logging.getLogger(__name__)

ORDERS = ("worst_first", "calibration")
DEFAULT_CALIBRATION_SIZE = 60
"""Labels per class in a calibration sample: past the 59 that the smallest
proof at 95 % precision and 95 % confidence needs."""


def review_view(
    samples: Any,
    pred_field: str,
    order: str = "worst_first",
    classes: Sequence[str] | None = None,
    patches: bool = False,
    bins: int = DEFAULT_BINS,
    size: int = DEFAULT_CALIBRATION_SIZE,
    seed: int | None = None,
) -> Any:
    """The labels of ``pred_field`` that still need a person (neither
    ``accepted`` nor ``rejected``), as a view to review in the App.

    Args:
        samples: a dataset or view, or a patches view of ``pred_field``.
        order: ``"worst_first"``: lowest ``quality`` first (samples by
            their lowest unreviewed quality; labels without a quality, and
            labels a person edited or added, whose run quality no longer
            describes them, come first). ``"calibration"``: per class, ``size`` unreviewed labels
            with a quality drawn at random within ``bins`` quality bins, in
            proportion to each bin (an unbiased sample for
            ``calibrate_acceptance``), in random order; only the drawn
            labels are shown.
        classes: only these classes (default: all).
        patches: one patch per label (``to_patches``) instead of samples.
        seed: the calibration draw's random seed.

    Returns:
        the view; ``view.count("<pred_field>.detections")`` (or, for
        patches, ``len(view)``) is what is left, also logged.

    Raises:
        ValueError: an unknown order, a class no label has, bins or size
            below 1, or a field that holds no detections.
    """
    if order not in ORDERS:
        raise ValueError(f"Unknown order {order!r}: use one of {ORDERS}")
    path = labels_path(samples, pred_field)
    if patches and path != pred_field:
        samples = samples.to_patches(pred_field)
        path = pred_field
    if order == "calibration" and min(int(bins), int(size)) < 1:
        raise ValueError(f"bins and size must be at least 1, not {bins} and {size}")
    condition = unreviewed()
    if classes:
        condition = condition & F("label").is_in(check_classes(samples, pred_field, classes))
    view = samples.filter_labels(pred_field, condition)
    if order == "worst_first":  # unknown quality (a person's work has none) first
        unknown = person_made(samples, pred_field) | ~F("quality").exists()
        quality = unknown.if_else(-1.0, F("quality"))
        if path == pred_field:
            view = view.sort_by(F(pred_field).apply(quality))
        else:
            view = view.sort_by(F(path).map(quality).min())
    else:
        view = _calibration_sample(view, pred_field, path, bins, size, seed)
    left = view.count(path)
    logger.info("%d labels of '%s' left to review", left, pred_field)
    return view


def _calibration_sample(
    view: Any, pred_field: str, path: str, bins: int, size: int, seed: int | None
) -> Any:
    """The stratified draw of :func:`review_view`, one class at a time."""
    table = LabelTable.read(view, pred_field)
    rng = np.random.default_rng(seed)
    drawn = []
    for name in sorted(set(table.labels)):
        rows = np.flatnonzero((table.labels == name) & ~np.isnan(table.quality))
        drawn.extend(table.ids[rows[stratified_draw(table.quality[rows], bins, size, rng)]])
    drawn = list(rng.permutation(np.asarray(drawn, dtype=object)))
    sample_ids, label_ids = view.values(["id", f"{path}.id"])
    owner = {}
    for sample_id, ids in zip(sample_ids, label_ids, strict=True):
        for label_id in ids if isinstance(ids, list) else [ids]:
            owner[label_id] = sample_id
    order = list(dict.fromkeys(owner[i] for i in drawn))
    return view.select_labels(ids=drawn, fields=pred_field).select(order, ordered=True)


def _threshold_map(
    thresholds: AcceptanceCalibration | Mapping[str, float] | float | None,
) -> dict[str, float]:
    if isinstance(thresholds, AcceptanceCalibration):
        return thresholds.thresholds
    if thresholds is None:
        return {}
    if isinstance(thresholds, Mapping):
        return {str(k): v for k, v in thresholds.items() if v is not None}
    raise ValueError(
        "thresholds must be a calibration result or {class: quality}; "
        "give one threshold for all classes as min_quality"
    )


def _check_quality(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{name} must be a number in [0, 1], not {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], not {value}")


def accept_pseudo_labels(
    samples: Any,
    pred_field: str,
    min_quality: float | None = None,
    reject_below: float | None = None,
    thresholds: AcceptanceCalibration | Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Tags unreviewed labels at or above a quality threshold ``accepted``
    (and ``auto_accepted``), and, with ``reject_below``, unreviewed labels
    below that floor ``rejected`` (and ``auto_rejected``). Labels that
    already carry a verdict, a person's or an earlier automatic one, and
    labels a person edited or added (:func:`~.verdicts.person_made`) are
    never touched; labels without a ``quality`` are left unreviewed.

    Args:
        samples: a dataset or view (or a patches view of ``pred_field``).
        min_quality: the threshold for classes that ``thresholds`` does not
            name (None: those classes are not accepted).
        reject_below: the floor; below every acceptance threshold.
        thresholds: per-class thresholds: the result of
            ``calibrate_acceptance`` (its undecided classes fall back to
            ``min_quality``) or ``{class: quality}``.

    Returns:
        ``{"accepted": n, "rejected": n, "per_class": {class: {"accepted":
        n, "rejected": n}}, "unreviewed": n left}``.

    Raises:
        ValueError: no threshold or floor given, a value that is not a
            number in [0, 1], a class no label has, a floor above an
            acceptance threshold, or a field without detections.
    """
    path = labels_path(samples, pred_field)
    per_class = _threshold_map(thresholds)
    check_classes(samples, pred_field, list(per_class), "thresholds")
    for name, value in [("min_quality", min_quality), ("reject_below", reject_below)] + [
        (f"threshold of '{c}'", t) for c, t in per_class.items()
    ]:
        _check_quality(name, value)
    if min_quality is None and thresholds is None and reject_below is None:
        raise ValueError("Give min_quality, thresholds or reject_below")
    levels = [*per_class.values(), *([] if min_quality is None else [min_quality])]
    if reject_below is not None and levels and reject_below > min(levels):
        raise ValueError(
            f"reject_below ({reject_below}) lies above an acceptance threshold "
            f"({min(levels)}): a label cannot be both"
        )
    open_labels = unreviewed() & ~person_made(samples, pred_field) & F("quality").exists()
    rules = [(F("label") == c) & (F("quality") >= t) for c, t in per_class.items()]
    if min_quality is not None:
        rules.append(~F("label").is_in(list(per_class)) & (F("quality") >= min_quality))
    counts = {ACCEPTED: {}, REJECTED: {}}
    steps = []
    if rules:
        steps.append((ACCEPTED, AUTO_ACCEPTED, open_labels & F.any(rules)))
    if reject_below is not None:
        steps.append((REJECTED, AUTO_REJECTED, open_labels & (F("quality") < reject_below)))
    for verdict, marker, condition in steps:
        chosen = samples.filter_labels(pred_field, condition)
        counts[verdict] = chosen.count_values(f"{path}.label")
        chosen.tag_labels([verdict, marker], label_fields=[pred_field])
    classes = sorted(set(counts[ACCEPTED]) | set(counts[REJECTED]))
    return {
        "accepted": sum(counts[ACCEPTED].values()),
        "rejected": sum(counts[REJECTED].values()),
        "per_class": {c: {v: counts[v].get(c, 0) for v in (ACCEPTED, REJECTED)} for c in classes},
        "unreviewed": samples.filter_labels(pred_field, unreviewed()).count(path),
    }


def review_status(samples: Any, pred_field: str) -> dict[str, Any]:
    """Where the review of a field stands, per class and overall.

    Returns:
        ``{"pred_field", "rows"}``: one row per class, then ``"all"``, each
        ``{"class", "labels", "accepted", "rejected", "auto_accepted",
        "auto_rejected", "conflicting", "unreviewed", "edited",
        "precision"}``, where ``accepted``/``rejected`` are a person's
        verdicts, ``edited`` counts the labels a person changed or added
        (:func:`~.verdicts.person_made`, whatever their verdict), and
        ``precision`` is accepted / (accepted + rejected) among the labels
        as the run drew them (None before any).
    """
    table = LabelTable.read(samples, pred_field)
    rows = []
    for name in [*sorted(set(table.labels)), None]:
        mask = np.ones(table.ids.size, bool) if name is None else table.labels == name
        codes = table.verdict[mask]
        counts = np.bincount(codes, minlength=len(VERDICT_NAMES))
        as_drawn = np.bincount(table.verdict[mask & ~table.edited], minlength=len(VERDICT_NAMES))
        judged = as_drawn[PERSON_ACCEPTED] + as_drawn[PERSON_REJECTED]
        row = {"class": "all" if name is None else name, "labels": int(codes.size)}
        row.update({VERDICT_NAMES[k]: int(counts[k]) for k in VERDICT_NAMES})
        row["edited"] = int(table.edited[mask].sum())
        row["precision"] = round(float(as_drawn[PERSON_ACCEPTED] / judged), 4) if judged else None
        rows.append(row)
    return {"pred_field": pred_field, "rows": rows, "unreviewed": rows[-1]["unreviewed"]}
