"""Calibrated acceptance: the Clopper–Pearson bound, the chosen threshold
on simulated labels whose correctness is known, the bound's coverage over
seeded simulations, and calibration on a dataset from a person's verdicts
or from ground truth, feeding accept_pseudo_labels."""

from __future__ import annotations

import fiftyone as fo
import numpy as np
import pytest
from scipy.stats import binom

from diffuprompter_plugin.calibration import (
    bin_index,
    calibrate_acceptance,
    calibrate_class,
    lower_bound,
    min_proof,
    precision_above,
    proportional_allocation,
    quality_edges,
    reviews_needed,
    stratified_draw,
)
from diffuprompter_plugin.review import accept_pseudo_labels, review_status, review_view

TARGET, CONFIDENCE = 0.95, 0.95
SIMULATIONS = 400


def population(
    rng: np.random.Generator, size: int = 3000, flat: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(quality, correct) of one class: quality ~ Beta(5, 2), and a label is
    correct with probability 1 - 0.6 (1 - q)^2, so precision rises with
    quality (about 0.99 in the top fifth, 0.93 overall); with ``flat``, 0.95
    whatever the quality (where stratifying gains nothing, the hardest case
    for the bound)."""
    quality = rng.beta(5, 2, size)
    chance = np.full(size, 0.95) if flat else 1 - 0.6 * (1 - quality) ** 2
    return quality, (rng.random(size) < chance).astype(float)


def reviewed(correct: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """``correct`` where a person judged (``drawn``), NaN elsewhere."""
    known = np.full(correct.size, np.nan)
    known[drawn] = correct[drawn]
    return known


def test_lower_bound_is_clopper_pearson():
    for k, n in ((0, 10), (7, 10), (45, 50), (59, 59)):
        bound = lower_bound(k, n, CONFIDENCE)
        if k == 0:
            assert bound == 0.0
            continue
        # the bound is the p at which seeing k or more correct has chance alpha
        assert binom.sf(k - 1, n, bound) == pytest.approx(1 - CONFIDENCE, abs=1e-9)
    assert lower_bound(59, 59, 0.95) == pytest.approx(0.05 ** (1 / 59))
    assert min_proof(0.95, 0.95) == 59  # 58 of 58 is not enough, 59 of 59 is
    assert lower_bound(58, 58, 0.95) < 0.95 <= lower_bound(59, 59, 0.95)


def test_stratified_draw_is_proportional_and_seeded():
    rng = np.random.default_rng(0)
    quality = rng.beta(5, 2, 1000)
    drawn = stratified_draw(quality, 5, 100, np.random.default_rng(1))
    assert len(set(drawn)) == 100
    edges = quality_edges(quality, 5)
    assert np.bincount(bin_index(quality[drawn], edges), minlength=5).tolist() == [20] * 5
    assert np.array_equal(drawn, stratified_draw(quality, 5, 100, np.random.default_rng(1)))
    assert proportional_allocation([10, 5, 0, 1], 7).tolist() == [4, 2, 0, 1]
    assert proportional_allocation([3, 2], 10).tolist() == [3, 2]


def test_weighted_estimate_reduces_to_clopper_pearson_when_proportional():
    estimate, bound, n_eff = precision_above(
        np.array([100.0, 300.0]), np.array([10.0, 30.0]), np.array([9.0, 29.0]), CONFIDENCE
    )
    assert estimate == pytest.approx(38 / 40) and n_eff == pytest.approx(40)
    assert bound == pytest.approx(lower_bound(38, 40, CONFIDENCE))
    nan, zero, _ = precision_above(np.array([5.0, 5.0]), np.array([0.0, 5.0]), np.ones(2), 0.9)
    assert np.isnan(nan) and zero == 0.0  # a bin with labels but no verdict


def test_chosen_threshold_meets_the_target():
    rng = np.random.default_rng(0)
    quality, correct = population(rng)
    drawn = stratified_draw(quality, 5, 1000, rng)
    result = calibrate_class(
        "ship", quality, reviewed(correct, drawn), np.isnan(reviewed(correct, drawn)),
        TARGET, CONFIDENCE,
    )  # fmt: skip
    assert result.decided and result.lower_bound >= TARGET
    above = quality >= result.threshold
    assert correct[above].mean() >= TARGET  # the true precision of what it would accept
    assert result.would_accept == int((above & ~np.isin(np.arange(3000), drawn)).sum())
    assert result.threshold > quality.min()  # overall precision (~0.91) is below target
    assert [t["threshold"] for t in result.thresholds_tried] == sorted(
        (t["threshold"] for t in result.thresholds_tried), reverse=True
    )


def coverage(flat: bool) -> dict[str, float]:
    """Over SIMULATIONS seeded simulations (3000 labels, 300 reviewed in
    calibration order): how often the bound at a fixed threshold (the
    population's median quality) lies at or below the true precision above
    it, and how often the chosen threshold's true precision meets the target.
    Also the first with reviews spread unevenly (half of them in the lowest
    bin), where the bins are reweighted."""
    fixed, chosen, uneven, decided = [], [], [], 0
    for seed in range(SIMULATIONS):
        rng = np.random.default_rng(seed)
        quality, correct = population(rng, flat=flat)
        drawn = stratified_draw(quality, 5, 300, rng)
        known = reviewed(correct, drawn)
        edges = quality_edges(quality, 5)
        strata = bin_index(quality, edges)
        middle = int(np.searchsorted(edges, np.median(quality)))  # fixed before any verdict
        middle = min(middle, len(edges) - 1)
        truth = correct[quality >= edges[middle]].mean()

        def bound_at(known: np.ndarray, strata=strata, middle=middle, edges=edges) -> float:
            judged = ~np.isnan(known)
            counts = [
                np.bincount(strata[mask], weights=w, minlength=len(edges))[middle:]
                for mask, w in (
                    (np.ones(known.size, bool), None),
                    (judged, None),
                    (judged, known[judged]),
                )
            ]
            return precision_above(*counts, CONFIDENCE)[1]

        fixed.append(bound_at(known) <= truth)
        low = np.flatnonzero(strata == 0)
        skewed = np.concatenate([rng.choice(low, 150, replace=False), drawn[:150]])
        uneven.append(bound_at(reviewed(correct, np.unique(skewed))) <= truth)
        result = calibrate_class("c", quality, known, np.isnan(known), TARGET, CONFIDENCE)
        if result.decided:
            decided += 1
            chosen.append(correct[quality >= result.threshold].mean() >= TARGET)
        else:
            chosen.append(True)  # nothing accepted: no false claim
    return {
        "fixed threshold": float(np.mean(fixed)),
        "uneven reviews": float(np.mean(uneven)),
        "chosen threshold meets target": float(np.mean(chosen)),
        "decided": decided / SIMULATIONS,
    }


def test_bound_covers_the_true_precision_at_its_nominal_rate():
    rising, flat = coverage(flat=False), coverage(flat=True)
    print("rising precision", rising, "flat precision", flat)  # the README's figures
    for rates in (rising, flat):
        assert rates["fixed threshold"] >= CONFIDENCE
        assert rates["uneven reviews"] >= CONFIDENCE
        assert rates["chosen threshold meets target"] >= CONFIDENCE
    assert rising["decided"] > 0.5  # not passed by never deciding
    assert flat["fixed threshold"] < 0.99  # and the bound is not trivially loose


def test_reviews_needed_decides_an_undecided_class():
    assert reviews_needed(0, 0, 100, TARGET, CONFIDENCE) == 59
    assert reviews_needed(30, 30, 100, TARGET, CONFIDENCE) == 29
    assert lower_bound(59, 59, CONFIDENCE) >= TARGET > lower_bound(58, 58, CONFIDENCE)
    more = reviews_needed(49, 50, 1000, TARGET, CONFIDENCE)
    p = 49 / 50
    assert lower_bound(49 + p * more, 50 + more, CONFIDENCE) >= TARGET
    assert lower_bound(49 + p * (more - 1), 49 + more, CONFIDENCE) < TARGET
    assert reviews_needed(45, 50, 1000, TARGET, CONFIDENCE) is None  # 0.90 < target
    assert reviews_needed(30, 30, 10, TARGET, CONFIDENCE) is None  # too few left

    quality = np.linspace(0, 1, 400)
    undecided = calibrate_class("c", quality, np.full(400, np.nan), np.ones(400, bool), TARGET,
                                CONFIDENCE)  # fmt: skip
    assert not undecided.decided and undecided.more_reviews == 59
    assert undecided.would_accept == 0


@pytest.fixture
def crowded(tmp_path):
    """400 ship labels (quality 0..1) on 8 samples; those below 0.3 wrong."""
    dataset = fo.Dataset()
    rng = np.random.default_rng(3)
    quality = rng.random(400)
    samples = []
    for i in range(8):
        dets = [
            fo.Detection(label="ship", bounding_box=[0.1, 0.1, 0.1, 0.1], quality=float(q),
                         truth=bool(q >= 0.3))
            for q in quality[i * 50 : (i + 1) * 50]
        ]  # fmt: skip
        samples.append(fo.Sample(filepath=str(tmp_path / f"{i}.png"), dp=fo.Detections(
            detections=dets)))  # fmt: skip
    dataset.add_samples(samples)
    yield dataset
    dataset.delete()


def test_calibration_from_reviews_feeds_accept(crowded):
    view = review_view(crowded, "dp", order="calibration", size=200, seed=0)
    truth = [t for row in view.values("dp.detections.truth") for t in row]
    ids = [i for row in view.values("dp.detections.id") for i in row]
    good = [i for i, t in zip(ids, truth, strict=True) if t]
    bad = [i for i, t in zip(ids, truth, strict=True) if not t]
    crowded.select_labels(ids=good).tag_labels(["accepted"], label_fields=["dp"])
    crowded.select_labels(ids=bad).tag_labels(["rejected"], label_fields=["dp"])

    calibration = calibrate_acceptance(crowded, "dp", target_precision=0.95)
    ship = calibration.classes["ship"]
    assert calibration.source == "reviews" and ship.judged == 200 and ship.decided
    assert ship.threshold >= 0.3 - 0.1  # lowest bins hold the wrong labels
    assert ship.lower_bound >= 0.95
    out = accept_pseudo_labels(crowded, "dp", thresholds=calibration)
    assert out["accepted"] == ship.would_accept > 0
    rows = {r["class"]: r for r in review_status(crowded, "dp")["rows"]}
    assert rows["ship"]["auto_accepted"] == ship.would_accept
    assert rows["ship"]["accepted"] == len(good) and rows["ship"]["rejected"] == len(bad)
    again = calibrate_acceptance(crowded, "dp")  # automatic verdicts are not evidence
    assert again.classes["ship"].judged == 200
    assert again.to_dict()["thresholds"] == {"ship": ship.threshold}
    assert again.table()[0]["would_accept"] == 0  # all taken


def test_calibration_from_ground_truth_uses_fiftyone_matches(tmp_path):
    dataset = fo.Dataset()
    square = np.ones((4, 4), bool)  # "hull": in no built-in class map, matched by its name
    samples = []
    for i in range(30):
        gt = fo.Detection(label="hull", bounding_box=[0.1, 0.1, 0.4, 0.4], mask=square)
        hit = fo.Detection(label="hull", bounding_box=[0.1, 0.1, 0.4, 0.4], mask=square,
                           quality=0.5 + i / 100)  # fmt: skip
        miss = fo.Detection(label="hull", bounding_box=[0.6, 0.6, 0.3, 0.3], mask=square,
                            quality=0.2 + i / 100)  # fmt: skip
        samples.append(fo.Sample(
            filepath=str(tmp_path / f"{i}.png"), metadata=fo.ImageMetadata(width=10, height=10),
            gt=fo.Detections(detections=[gt]), dp=fo.Detections(detections=[hit, miss]),
        ))  # fmt: skip
    dataset.add_samples(samples)
    try:
        calibration = calibrate_acceptance(dataset, "dp", gt_field="gt", target_precision=0.9)
        hull = calibration.classes["hull"]
        assert calibration.source == "ground truth 'gt'" and hull.judged == 60
        # two bins at a 0.9 target (n_min 29); the top one holds the 30 hits
        # (quality 0.5..0.79) and the best miss (0.49): tp/fp from FiftyOne
        assert [t["threshold"] for t in hull.thresholds_tried] == [0.49]
        assert hull.precision == pytest.approx(30 / 31) and not hull.decided
        assert dataset.list_evaluations() == []  # the scratch evaluation is gone
        with pytest.raises(ValueError, match="'dp' cannot be the ground truth of its own"):
            calibrate_acceptance(dataset, "dp", gt_field="dp")
        with pytest.raises(ValueError, match="Ground-truth field 'nope' does not exist"):
            calibrate_acceptance(dataset, "dp", gt_field="nope")
        with pytest.raises(ValueError, match="target_precision must lie strictly"):
            calibrate_acceptance(dataset, "dp", target_precision=1.0)
    finally:
        dataset.delete()
