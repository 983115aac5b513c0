"""Calibrated auto-accept: per class, the lowest quality threshold above
which the labels' precision meets a target, stated as a one-sided lower
confidence bound, from a person's verdicts or from ground truth.

The method (README, "Review and verified export"):

- **Evidence.** Each label of a class with a ``quality`` is correct or not:
  a person's ``accepted``/``rejected`` tag, or, with a ground-truth field, a
  match at IoU >= 0.5 in FiftyOne's own ``evaluate_detections`` (masks where
  both sides have them). Automatic verdicts never count.
- **Bins.** The class's labels are split into quality bins at quantiles of
  their quality (fixed from the qualities and the number of judged labels,
  never from the verdicts); the candidate thresholds are the bins' lower
  edges. There are at most ``bins`` bins, and fewer when few labels are
  judged: ``judged // n_min``, so that the top bin can hold the
  ``n_min = ceil(ln(alpha) / ln(target))`` judged labels that the smallest
  possible proof needs (59 at 95 % / 95 %).
- **Estimate above a threshold.** Bins above it are weighted by their share
  W_b of the class's labels: ``p = sum W_b k_b / n_b`` (k_b correct of n_b
  judged in bin b), unbiased when the judged labels of each bin are a random
  sample of it (the calibration order of :func:`~.review.review_view`).
- **Bound.** One-sided Clopper–Pearson at level ``confidence`` on Kish's
  effective counts: ``n_eff = 1 / sum(W_b^2 / n_b)``, ``k_eff = p n_eff``,
  ``lower = Beta^-1(1 - confidence; k_eff, n_eff - k_eff + 1)``. When the
  judged labels are spread in proportion to the bins this is exactly
  Clopper–Pearson on k of n.
- **Choice.** A fixed-sequence test: thresholds are tried from the highest
  down, and the walk stops at the first whose bound misses the target (or
  that has a bin with labels but no verdict). The last passing threshold is
  chosen; the chance of choosing one whose true precision is below target
  stays at most ``1 - confidence`` without any correction for the scan.
- **Reviews that would decide a class** with no passing threshold: at the
  first step (the top bin, k of n judged) and the observed precision
  ``p = k/n`` (1 when nothing is judged yet), the smallest m with
  ``lower(k + p m, n + m) >= target``; None when ``p <= target`` (more
  reviews at that precision never reach it) or m exceeds the bin's
  unjudged labels.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import beta

from .verdicts import (
    PERSON_ACCEPTED,
    PERSON_REJECTED,
    UNREVIEWED,
    LabelTable,
    check_classes,
    labels_path,
)

logger = logging.getLogger(__name__)

DEFAULT_BINS = 5


def lower_bound(correct: float, judged: float, confidence: float) -> float:
    """One-sided Clopper–Pearson lower confidence bound of a precision.

    Args:
        correct: k, correct labels (may be fractional: effective counts).
        judged: n, labels judged.
        confidence: 1 - alpha, e.g. 0.95.

    Returns:
        the bound in [0, 1]; 0 when nothing correct was judged.
    """
    if judged <= 0 or correct <= 0:
        return 0.0
    correct = min(correct, judged)
    return float(beta.ppf(1.0 - confidence, correct, judged - correct + 1.0))


def min_proof(target: float, confidence: float) -> int:
    """``n_min``: the fewest labels, all correct, whose bound reaches ``target``."""
    return math.ceil(math.log(1.0 - confidence) / math.log(target))


def quality_edges(quality: np.ndarray, bins: int) -> np.ndarray:
    """Lower edges of up to ``bins`` quality bins at quantiles of ``quality``
    ((N,) float, no NaN), ascending, the first the minimum; ties merge bins."""
    if quality.size == 0:
        return np.zeros(0)
    levels = np.quantile(quality, np.arange(bins) / bins, method="inverted_cdf")
    return np.unique(levels)


def bin_index(quality: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each quality ((N,) float) among lower ``edges``; -1 below the first."""
    return np.searchsorted(edges, quality, side="right") - 1


def proportional_allocation(sizes: Sequence[int], total: int) -> np.ndarray:
    """``total`` draws split across strata in proportion to ``sizes``
    (largest remainders), never more than a stratum holds."""
    sizes = np.asarray(sizes, dtype=int)
    total = min(int(total), int(sizes.sum()))
    if total <= 0:
        return np.zeros_like(sizes)
    share = sizes * total / sizes.sum()
    take = np.floor(share).astype(int)
    for k in np.argsort(-(share - take), kind="stable")[: total - take.sum()]:
        take[k] += 1
    return np.minimum(take, sizes)


def stratified_draw(
    quality: np.ndarray, bins: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of ``size`` labels drawn at random within quality bins, in
    proportion to each bin's labels (so the draw weighs itself), in random
    order. ``quality``: (N,) float, no NaN."""
    edges = quality_edges(quality, bins)
    strata = bin_index(quality, edges)
    members = [np.flatnonzero(strata == b) for b in range(len(edges))]
    take = proportional_allocation([len(m) for m in members], size)
    drawn = [rng.choice(m, t, replace=False) for m, t in zip(members, take, strict=True) if t]
    return rng.permutation(np.concatenate(drawn)) if drawn else np.zeros(0, int)


def precision_above(
    population: np.ndarray, judged: np.ndarray, correct: np.ndarray, confidence: float
) -> tuple[float, float, float]:
    """The weighted precision of the bins above a threshold and its bound.

    Args:
        population: N_b, labels per bin (B,).
        judged: n_b, judged labels per bin (B,).
        correct: k_b, correct judged labels per bin (B,).

    Returns:
        (estimate, lower bound, effective judged count); NaN, 0, 0 when a bin
        with labels has none judged.
    """
    present = population > 0
    if not present.any() or (judged[present] == 0).any():
        return float("nan"), 0.0, 0.0
    weights = population[present] / population[present].sum()
    estimate = float((weights * correct[present] / judged[present]).sum())
    n_eff = float(1.0 / (weights**2 / judged[present]).sum())
    return estimate, lower_bound(estimate * n_eff, n_eff, confidence), n_eff


def reviews_needed(
    correct: int, judged: int, available: int, target: float, confidence: float
) -> int | None:
    """The fewest further reviews after which ``correct`` of ``judged`` at
    the observed precision (1 with nothing judged) would reach ``target``;
    None when the observed precision is at or below the target or more than
    ``available`` reviews would be needed (see the module notes)."""
    observed = correct / judged if judged else 1.0
    if observed <= target:
        return None
    for more in range(available + 1):
        if lower_bound(correct + observed * more, judged + more, confidence) >= target:
            return more
    return None


@dataclass
class ClassCalibration:
    """The calibration of one class (see :func:`calibrate_acceptance`).

    Attributes:
        label: the class.
        labels: labels of the class with a quality.
        judged: labels whose correctness is known (person verdicts or
            ground-truth matches).
        threshold: the chosen quality threshold, None when undecided.
        precision: estimated precision above the threshold (above the
            highest candidate when undecided; NaN without evidence there).
        lower_bound: its one-sided lower confidence bound.
        judged_above: judged labels above the threshold.
        would_accept: unreviewed labels at or above the threshold.
        more_reviews: for an undecided class, further reviews (calibration
            order) that would decide it; None when reviews at the observed
            precision cannot.
        thresholds_tried: the candidate thresholds, highest first, with each
            tried one's estimate and bound.
    """

    label: str
    labels: int
    judged: int
    threshold: float | None
    precision: float
    lower_bound: float
    judged_above: int
    would_accept: int
    more_reviews: int | None
    thresholds_tried: list[dict[str, float]] = field(default_factory=list)

    @property
    def decided(self) -> bool:
        return self.threshold is not None


@dataclass
class AcceptanceCalibration:
    """Per-class quality thresholds meeting ``target_precision`` at
    ``confidence``; ``accept_pseudo_labels(..., thresholds=calibration)``
    takes it as it is (undecided classes are left alone)."""

    pred_field: str
    target_precision: float
    confidence: float
    source: str
    classes: dict[str, ClassCalibration]

    @property
    def thresholds(self) -> dict[str, float]:
        """``{class: threshold}`` of the decided classes."""
        return {c: r.threshold for c, r in self.classes.items() if r.threshold is not None}

    def table(self) -> list[dict[str, Any]]:
        """One row per class for display (rounded)."""

        def rounded(value: float | None) -> float | None:
            return None if value is None or math.isnan(value) else round(value, 4)

        return [
            {
                "class": r.label,
                "labels": r.labels,
                "judged": r.judged,
                "threshold": rounded(r.threshold),
                "precision": rounded(r.precision),
                "lower_bound": rounded(r.lower_bound),
                "would_accept": r.would_accept,
                "more_reviews": r.more_reviews,
            }
            for r in self.classes.values()
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (NaN becomes None)."""
        data = asdict(self)
        data["thresholds"] = self.thresholds
        data["table"] = self.table()
        for report in data["classes"].values():
            for key in ("precision", "lower_bound"):
                if isinstance(report[key], float) and math.isnan(report[key]):
                    report[key] = None
        return data


def calibrate_class(
    label: str,
    quality: np.ndarray,
    correct: np.ndarray,
    unreviewed: np.ndarray,
    target: float,
    confidence: float,
    bins: int = DEFAULT_BINS,
) -> ClassCalibration:
    """The calibration of one class from arrays (the method of the module notes).

    Args:
        quality: (N,) float, every label of the class (no NaN).
        correct: (N,) float: 1 correct, 0 wrong, NaN not judged.
        unreviewed: (N,) bool, labels that acceptance may still tag.
    """
    judged_mask = ~np.isnan(correct)
    count = max(1, min(bins, int(judged_mask.sum()) // min_proof(target, confidence)))
    edges = quality_edges(quality, count)
    strata = bin_index(quality, edges)
    size = len(edges)
    population = np.bincount(strata, minlength=size).astype(float)
    judged = np.bincount(strata[judged_mask], minlength=size).astype(float)
    good = np.bincount(strata[judged_mask], weights=correct[judged_mask], minlength=size)
    chosen, tried, first = None, [], None
    for b in range(size - 1, -1, -1):  # fixed sequence, highest threshold first
        estimate, bound, _ = precision_above(population[b:], judged[b:], good[b:], confidence)
        step = {"threshold": float(edges[b]), "precision": estimate, "lower_bound": bound}
        tried.append(step)
        first = first or step
        if not bound >= target:
            break
        chosen = step
    report = chosen or first or {"threshold": None, "precision": float("nan"), "lower_bound": 0.0}
    threshold = None if chosen is None else chosen["threshold"]
    more = None
    if chosen is None and size:
        top = strata == size - 1
        more = reviews_needed(
            int(good[-1]), int(judged[-1]), int((top & ~judged_mask).sum()), target, confidence
        )
    above = quality >= threshold if threshold is not None else np.zeros(quality.size, bool)
    return ClassCalibration(
        label=label,
        labels=int(quality.size),
        judged=int(judged_mask.sum()),
        threshold=threshold,
        precision=report["precision"],
        lower_bound=report["lower_bound"],
        judged_above=int((above & judged_mask).sum()),
        would_accept=int((above & unreviewed).sum()),
        more_reviews=more,
        thresholds_tried=tried,
    )


def calibrate_acceptance(
    samples: Any,
    pred_field: str,
    target_precision: float = 0.95,
    confidence: float = 0.95,
    gt_field: str | None = None,
    classes: Sequence[str] | None = None,
    bins: int = DEFAULT_BINS,
    class_map: Mapping[str, str] | None = None,
) -> AcceptanceCalibration:
    """Per class, the lowest quality threshold whose above-threshold
    precision meets ``target_precision`` as a one-sided lower confidence
    bound at ``confidence`` (method: the module notes and the README).

    Args:
        samples: a dataset or view; its labels of ``pred_field`` carry
            ``quality`` (labels without it are left out).
        target_precision: p*, in (0, 1).
        confidence: 1 - alpha, in (0, 1).
        gt_field: ground truth on (some of) the samples: a label there is
            correct when FiftyOne's ``evaluate_detections`` matches it at
            IoU >= 0.5 (with masks where both fields have them), instead of a
            person's verdicts. Ground-truth classes are mapped onto the
            pseudo-label classes as in ``evaluate_pseudo_labels``.
        classes: the classes to calibrate (default: all).
        bins: most quality bins per class.
        class_map: ``{ground-truth name: pseudo-label name}`` for ``gt_field``.

    Returns:
        an :class:`AcceptanceCalibration`, which ``accept_pseudo_labels``
        takes as ``thresholds``.

    Raises:
        ValueError: a bad target or confidence, a missing field, a class
            no label has, or a label field without any ``quality``, naming
            it.
    """
    for name, value in (("target_precision", target_precision), ("confidence", confidence)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must lie strictly between 0 and 1, not {value}")
    if int(bins) < 1:
        raise ValueError(f"bins must be at least 1, not {bins}")
    table = LabelTable.read(samples, pred_field)
    if table.labels.size and table.edited.all():
        raise ValueError(
            f"Every label of '{pred_field}' was edited or added by a person: no run's "
            "quality describes them, so there is nothing to calibrate"
        )
    if table.labels.size and np.isnan(table.quality).all():
        raise ValueError(
            f"No label of '{pred_field}' has a 'quality' attribute: calibration ranks by it "
            "(runs made before quality signals existed lack it; re-threshold them)"
        )
    if gt_field is None:
        correct = np.full(table.ids.size, np.nan)
        correct[table.verdict == PERSON_ACCEPTED] = 1.0
        correct[table.verdict == PERSON_REJECTED] = 0.0
        source = "reviews"
    else:
        matched = ground_truth_matches(samples, pred_field, gt_field, class_map)
        correct = np.array([matched.get(i, np.nan) for i in table.ids], dtype=float)
        source = f"ground truth '{gt_field}'"
    names = (
        sorted(set(table.labels))
        if classes is None
        else check_classes(samples, pred_field, classes)
    )
    results = {}
    for name in names:
        keep = (table.labels == name) & ~np.isnan(table.quality)
        results[name] = calibrate_class(
            name,
            table.quality[keep],
            correct[keep],
            table.verdict[keep] == UNREVIEWED,
            target_precision,
            confidence,
            int(bins),
        )
    return AcceptanceCalibration(pred_field, target_precision, confidence, source, results)


def ground_truth_matches(
    samples: Any, pred_field: str, gt_field: str, class_map: Mapping[str, str] | None = None
) -> dict[str, float]:
    """``{label id: 1.0 matched, 0.0 not}`` for the labels of the samples
    that have ``gt_field``, from FiftyOne's ``evaluate_detections`` at IoU
    0.5 (masks when both fields have them), run under a scratch key that is
    deleted afterwards.

    Raises:
        ValueError: ``gt_field`` is missing, is ``pred_field``, or holds no
            objects.
    """
    from fiftyone import ViewField as F

    from .evaluation import mapped_view, resolve_class_map

    if not samples.has_field(gt_field):
        raise ValueError(f"Ground-truth field '{gt_field}' does not exist")
    if gt_field == pred_field:
        raise ValueError(f"'{gt_field}' cannot be the ground truth of its own labels")
    view = samples.exists(gt_field)
    if view.count(f"{gt_field}.detections") == 0:
        raise ValueError(f"Ground-truth field '{gt_field}' holds no objects")
    pred_labels = view.distinct(f"{labels_path(view, pred_field)}.label")
    gt_labels = view.distinct(f"{gt_field}.detections.label")
    mapping, unmatched = resolve_class_map(gt_labels, class_map, pred_labels)
    if unmatched:
        logger.warning(
            "Ground-truth classes of '%s' with no pseudo-label class, left out: %s "
            "(name them in class_map)",
            gt_field,
            ", ".join(unmatched),
        )
    if mapping:
        view = mapped_view(view, gt_field, mapping)

    def masked(field: str) -> bool:
        unmasked = view.filter_labels(field, ~F("mask").exists() & ~F("mask_path").exists())
        return unmasked.count(f"{field}.detections") == 0

    key = f"dp_calibration_{uuid.uuid4().hex[:8]}"
    try:
        view.evaluate_detections(
            pred_field,
            gt_field,
            eval_key=key,
            iou=0.5,
            use_masks=masked(pred_field) and masked(gt_field),
            classwise=True,
        )
        paths = [f"{pred_field}.detections.id", f"{pred_field}.detections.{key}"]
        ids, outcomes = view.values(paths)
    finally:
        if key in samples.list_evaluations():
            samples.delete_evaluation(key)
    return {
        i: 1.0 if o == "tp" else 0.0
        for row_ids, row in zip(ids, outcomes, strict=True)
        for i, o in zip(row_ids or [], row or [], strict=True)
    }
