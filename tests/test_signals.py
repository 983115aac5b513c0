"""Quality signals per instance: each on constructed cases with known
answers, the combined quality, and what a brain run stores."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from helpers import TINY_CONFIG
from segment_anything.utils.amg import calculate_stability_score
from segment_anything.utils.transforms import ResizeLongestSide

from diffuprompter_plugin.engine.config import DiffuPrompterConfig
from diffuprompter_plugin.engine.grounding import DrawMoments
from diffuprompter_plugin.engine.segmentation import SamPrompter
from diffuprompter_plugin.engine.signals import (
    Signals,
    draw_agreement,
    heat_contrast,
    merged_signals,
    ring_width,
)

SIGNALS = ("sam_iou", "region_iou", "stability", "heat_contrast", "draw_agreement", "quality")


class LogitSam:
    """SAM's predictor replaced by fixed logits: every prompt gets the same
    candidates, ``logits`` (C, H, W), with predicted IoUs ``ious`` (C,)."""

    def __init__(self, logits: torch.Tensor, ious: list[float]) -> None:
        self.logits, self.ious = logits, torch.tensor(ious)
        self.transform = ResizeLongestSide(1024)
        self.model = type("Model", (), {"mask_threshold": 0.0})()

    def set_image(self, rgb: np.ndarray) -> None:
        self.original_size = rgb.shape[:2]

    def predict_torch(self, point_coords, point_labels, boxes, multimask_output, return_logits):
        assert return_logits  # thresholded by the prompter, as predict_torch would
        count = len(boxes)
        return self.logits.expand(count, -1, -1, -1), self.ious.expand(count, -1), None


def _prompter(logits: torch.Tensor, ious: list[float]) -> SamPrompter:
    prompter = SamPrompter.__new__(SamPrompter)
    prompter.config = DiffuPrompterConfig(crf=False, min_area=4)
    prompter.device, prompter.dtype = torch.device("cpu"), torch.float32
    prompter.predictor = LogitSam(logits, ious)
    return prompter


def _cone(shape: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """Logits positive inside ``box`` (x0, y0, x1, y1), falling by one per
    pixel away from its edge: thresholds at +1 and -1 give different masks."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    x0, y0, x1, y1 = box
    dx = np.maximum(np.maximum(x0 - xx, xx - (x1 - 1)), 0)
    dy = np.maximum(np.maximum(y0 - yy, yy - (y1 - 1)), 0)
    inside = np.minimum(np.minimum(xx - x0, x1 - 1 - xx), np.minimum(yy - y0, y1 - 1 - yy))
    return torch.tensor(np.where((dx == 0) & (dy == 0), inside + 0.5, -(dx + dy) + 0.5)).float()


BLOB = (20, 20, 40, 40)
"""A bright 20 x 20 blob on a dim 64 x 64 heatmap."""


def _blob_heatmap() -> np.ndarray:
    heat = np.full((64, 64), 0.1, np.float32)
    heat[20:40, 20:40] = 0.9
    return heat


@pytest.mark.parametrize("sam_box", [(20, 20, 40, 40), (30, 20, 50, 40)], ids=["inside", "half"])
def test_sam_side_signals_come_from_the_chosen_candidate(sam_box):
    heat = _blob_heatmap()
    logits = torch.stack([_cone((64, 64), sam_box), torch.full((64, 64), -5.0)])
    (inst,) = _prompter(logits, [0.7, 0.99]).segment(np.zeros((64, 64, 3), np.uint8), {"v": heat})
    chosen = logits[0]  # the empty candidate has IoU 0 with the region
    assert inst.signals.sam_iou == pytest.approx(0.7)
    assert inst.signals.stability == calculate_stability_score(chosen[None], 0.0, 1.0).item()
    assert inst.signals.stability < 1  # the cone's thresholds at +1 and -1 differ
    assert inst.box == sam_box
    overlap = (min(sam_box[2], 40) - sam_box[0]) * 20
    assert inst.signals.region_iou == pytest.approx(overlap / (2 * 400 - overlap))
    assert inst.score == pytest.approx(heat[inst.full_mask((64, 64))].mean() * 0.7)
    assert inst.signals.draw_agreement is None  # no spreads given


def test_a_mask_inside_a_bright_blob_beats_one_half_outside_it():
    heat = _blob_heatmap()
    rgb = np.zeros((64, 64, 3), np.uint8)
    found = {}
    for name, box in {"inside": (20, 20, 40, 40), "half": (30, 20, 50, 40)}.items():
        logits = _cone((64, 64), box)[None]
        (found[name],) = _prompter(logits, [0.9]).segment(rgb, {"v": heat})
    inside, half = found["inside"].signals, found["half"].signals
    assert inside.region_iou == 1 and half.region_iou == pytest.approx(1 / 3)
    assert inside.heat_contrast == pytest.approx(0.8)  # 0.9 inside, 0.1 all around
    # half outside: 0.5 inside; the 5 px ring holds 100 px of the blob among 500
    assert half.heat_contrast == pytest.approx(0.5 - (100 * 0.9 + 400 * 0.1) / 500)
    assert half.quality < inside.quality


def test_heat_contrast_ring_width_and_edges():
    heat = _blob_heatmap()
    mask = np.zeros((64, 64), bool)
    mask[20:40, 20:40] = True
    assert ring_width(400) == 5 and ring_width(4) == 2  # a quarter of the side, at least 2
    assert heat_contrast(heat, mask) == pytest.approx(0.8)
    heat[15:45, 15:45] = 0.9  # the ring (5 px) as bright as the mask: no contrast
    assert heat_contrast(heat, mask) == pytest.approx(0.0, abs=1e-6)
    everything = np.ones((64, 64), bool)  # nothing around it: contrasted with 0
    assert heat_contrast(heat, everything) == pytest.approx(heat.mean())


def _draws(rng: np.random.Generator, count: int, spread: float) -> torch.Tensor:
    base = np.zeros((count, 16, 16), np.float32)
    base[:, 4:12, 4:12] = 0.8
    return torch.tensor(np.clip(base + spread * rng.standard_normal(base.shape), 0, 1)).float()


@pytest.mark.parametrize("split", [[6], [1] * 6, [4, 2], [2, 3, 1]], ids=str)
def test_draw_moments_equal_the_draws_mean_and_spread_however_split_into_calls(split):
    rng = np.random.default_rng(0)
    draws = {0: _draws(rng, 6, 0.2), 1: _draws(rng, 6, 0.0)}  # row 1: all draws equal
    moments = DrawMoments(2, (16, 16), torch.device("cpu"))
    start = 0
    for size in split:  # a call holds each row's draws start..start+size, contiguous
        rows = torch.tensor([0] * size + [1] * size)
        moments.add(
            rows, torch.cat([draws[0][start : start + size], draws[1][start : start + size]])
        )
        start += size
    mean = moments.mean.numpy()
    np.testing.assert_allclose(mean[0], draws[0].mean(0).numpy(), atol=1e-6)
    std = moments.spread("none").numpy()
    np.testing.assert_allclose(std[0], draws[0].std(0, unbiased=False).numpy(), atol=1e-6)
    assert (std[1] == 0).all() and (mean[1] == draws[1][0].numpy()).all()  # exactly
    span = draws[0].mean(0).max() - draws[0].mean(0).min()  # in the heatmap's units
    np.testing.assert_allclose(moments.spread("minmax")[0], std[0] / span.item(), atol=1e-6)


def test_draw_agreement_is_one_for_equal_draws_and_lower_as_they_disagree():
    heat = _blob_heatmap()
    mask = heat > 0.5
    assert draw_agreement(heat, np.zeros_like(heat), mask) == 1.0
    some = draw_agreement(heat, np.full_like(heat, 0.1), mask)
    more = draw_agreement(heat, np.full_like(heat, 0.3), mask)
    assert some == pytest.approx(1 - 0.1 / 0.9) and more == pytest.approx(1 - 0.3 / 0.9)
    assert draw_agreement(heat, np.full_like(heat, 1.0), mask) == 0.0  # spread above the heat


def test_draw_agreement_of_the_grounder_is_one_when_every_draw_is_the_same(
    tiny_diffuprompter, rgb
):
    """The real grounder: with one noise repeated L times every draw gives the
    same map, so the spread is 0 and every instance's agreement exactly 1;
    L seeded draws disagree, so agreement falls below 1."""
    grounder = tiny_diffuprompter.grounder
    own_noise = grounder.noise
    try:
        grounder.noise = lambda latents: own_noise(latents)[:1].expand(4, -1, -1, -1)
        same = tiny_diffuprompter.annotate(rgb, ["storage tank"])
    finally:
        grounder.noise = own_noise
    drawn = tiny_diffuprompter.annotate(rgb, ["storage tank"])
    assert (same.spreads["storage tank"] == 0).all()
    assert same.instances and all(i.signals.draw_agreement == 1.0 for i in same.instances)
    assert drawn.spreads["storage tank"].max() > 0
    assert drawn.instances and all(i.signals.draw_agreement < 1 for i in drawn.instances)


def test_quality_is_the_geometric_mean_in_0_1():
    signals = Signals(0.9, 0.8, 0.95, 0.5, 0.7)
    assert signals.quality == pytest.approx((0.9 * 0.8 * 0.95 * 0.5 * 0.7) ** (1 / 5))
    assert Signals(1.0, 1.0, 1.0, 1.0, 1.0).quality == 1.0
    assert Signals(0.9, 0.8, 0.95, -0.2, 0.7).quality == 0.0  # colder than around it
    assert Signals(0.9, 0.8, 0.95, 0.5, None).quality == pytest.approx(
        (0.9 * 0.8 * 0.95 * 0.5) ** (1 / 4)
    )  # no draw agreement (a run stored before the signals, re-thresholded)
    rng = np.random.default_rng(0)
    for values in rng.uniform(-0.2, 1.2, (200, 5)):
        assert 0 <= Signals(*values).quality <= 1
    attributes = signals.attributes()
    assert list(attributes) == list(SIGNALS) and attributes["quality"] == signals.quality
    assert "draw_agreement" not in Signals(0.9, 0.8, 0.95, 0.5, None).attributes()


def test_merged_signals_are_area_weighted_means():
    a, b = Signals(0.9, 0.8, 1.0, 0.6, 1.0), Signals(0.5, 0.4, 0.8, 0.2, None)
    merged = merged_signals([(a, 300), (b, 100)])
    assert merged.sam_iou == pytest.approx(0.8) and merged.region_iou == pytest.approx(0.7)
    assert merged.stability == pytest.approx(0.95) and merged.heat_contrast == pytest.approx(0.5)
    assert merged.draw_agreement == 1.0  # the mean over the parts that have it
    assert merged.quality == pytest.approx(math.prod([0.8, 0.7, 0.95, 0.5, 1.0]) ** 0.2)
    assert merged_signals([(None, 10), (None, 5)]) is None


def _tiny_run(dataset, tiny_models):
    """Brain run "dp" of class "ship" with the tiny models, gamma 0.3."""
    from diffuprompter_plugin.labelling import compute_pseudo_labels

    sd, sam = tiny_models
    config = TINY_CONFIG.replace(threshold=0.3)
    return compute_pseudo_labels(
        dataset, "dp", classes=["ship"], sd_model=sd, sam_model=sam, device="cpu", config=config
    )


def test_a_brain_run_stores_every_signal_and_the_sample_quality(image_dataset, tiny_models):
    from diffuprompter_plugin.labels import read_spread

    assert _tiny_run(image_dataset, tiny_models).instances > 0
    detections = [d for s in image_dataset for d in s.dp_instances.detections]
    for det in detections:
        values = {name: det[name] for name in SIGNALS}
        assert all(isinstance(v, float) for v in values.values()), values
        assert all(0 <= values[n] <= 1 for n in SIGNALS if n != "heat_contrast")
        assert -1 <= values["heat_contrast"] <= 1
        terms = [values[n] for n in SIGNALS[:5]]
        terms[3] = max(terms[3], 0)
        assert values["quality"] == pytest.approx(math.prod(terms) ** (1 / 5))
        # what the run drew, against which a person's edit is told
        assert (det.drawn_label, det.drawn_box) == (det.label, det.bounding_box)
    assert (
        image_dataset.get_field_schema()["dp_instances_quality"].__class__.__name__ == "FloatField"
    )
    for sample in image_dataset:
        qualities = [d.quality for d in sample.dp_instances.detections]
        assert sample.dp_instances_quality == (min(qualities) if qualities else None)
        spread = read_spread(sample.dp_heatmap_ship)
        assert spread.shape == (40, 56) and spread.max() > 0
    ordered = image_dataset.exists("dp_instances_quality").sort_by("dp_instances_quality")
    values = ordered.values("dp_instances_quality")
    assert values == sorted(values)  # sort_by gives the review order, worst first


def _as_stored_before_the_signals(dataset) -> None:
    """Rewrites a run's labels as runs before the signals stored them:
    detections with a confidence only, heatmaps without a spread file, no
    ``<pred_field>_quality``."""
    import fiftyone as fo

    for sample in dataset.iter_samples(autosave=True):
        sample["dp_instances"] = fo.Detections(
            detections=[
                fo.Detection(
                    label=d.label,
                    bounding_box=d.bounding_box,
                    mask=d.mask,
                    confidence=d.confidence,
                )
                for d in sample.dp_instances.detections
            ]
        )
        heat = sample.dp_heatmap_ship
        os.remove(heat.spread_path)
        sample["dp_heatmap_ship"] = fo.Heatmap(map_path=heat.map_path, range=heat.range)
    dataset.delete_sample_field("dp_instances_quality")


def test_a_run_stored_before_the_signals_loads_resumes_and_rethresholds(
    image_dataset, tiny_models
):
    from diffuprompter_plugin.labelling import resume_pseudo_labels
    from diffuprompter_plugin.rethreshold import rethreshold_pseudo_labels

    _tiny_run(image_dataset, tiny_models)
    _as_stored_before_the_signals(image_dataset)
    old = image_dataset.values("dp_instances.detections.confidence", unwind=True)
    assert old and image_dataset.count("dp_instances.detections.quality") == 0

    assert image_dataset.load_brain_results("dp").instances == len(old)
    first, *rest = image_dataset
    first["dp_instances"] = None  # the run was interrupted before this sample
    first.save()
    resumed = resume_pseudo_labels(image_dataset, "dp", device="cpu")
    assert resumed.processed == 4
    for sample in rest:  # labels kept as they were, without the signals
        assert sample.dp_instances_quality is None
        assert not any(d.has_field("quality") for d in sample.dp_instances.detections)
    first.reload()
    assert first.dp_heatmap_ship.spread_path  # labelled now: with the signals

    rethreshold_pseudo_labels(image_dataset, "dp", "dp_rt", thresholds=0.3, device="cpu")
    for sample in image_dataset:
        detections = sample.dp_rt.detections
        qualities = [d.quality for d in detections]  # recomputed by SAM, from the stored heatmaps
        assert sample.dp_rt_quality == (min(qualities) if qualities else None)
        spread_kept = sample.id == first.id
        assert all(d.has_field("draw_agreement") == spread_kept for d in detections)
    assert image_dataset.count("dp_rt.detections") > 0
    image_dataset.delete_brain_run("dp")  # its fields go, the quality fields included
    assert not {"dp_rt", "dp_rt_quality", "dp_instances_quality"} & set(
        image_dataset.get_field_schema()
    )
