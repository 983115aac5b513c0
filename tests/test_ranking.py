"""Evaluation by any ranking signal: AP with ``quality`` (or another
attribute) in place of ``confidence``, and the signals side by side."""

from __future__ import annotations

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from diffuprompter_plugin.evaluation import evaluate_pseudo_labels
from diffuprompter_plugin.ranking import compare_signals, ranked_view

SHAPE = (48, 64)


def _rect(x, y, w, h):
    mask = np.zeros(SHAPE, bool)
    mask[y : y + h, x : x + w] = True
    return mask


@pytest.fixture
def dataset(tmp_path):
    """Four images, each with one ship and two predictions: the true one
    with a high quality and a low confidence, a false one the other way."""
    dataset = fo.Dataset()
    for i in range(4):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.zeros((*SHAPE, 3), np.uint8)).save(path)
        truth = _rect(5 + i, 5, 12, 10)
        hit = fo.Detection.from_mask(truth, label="ship", confidence=0.3, quality=0.9,
                                     sam_iou=0.5)  # fmt: skip
        miss = fo.Detection.from_mask(_rect(40, 30, 10, 10), label="ship", confidence=0.9,
                                      quality=0.2, sam_iou=0.5)  # fmt: skip
        dataset.add_sample(
            fo.Sample(
                filepath=str(path),
                metadata=fo.ImageMetadata(width=SHAPE[1], height=SHAPE[0]),
                gt=fo.Detections(detections=[fo.Detection.from_mask(truth, label="ship")]),
                pred=fo.Detections(detections=[hit, miss]),
            )
        )
    yield dataset
    dataset.delete()


def test_evaluation_ranks_by_a_signal_and_keeps_the_confidence(dataset):
    by_confidence = evaluate_pseudo_labels(dataset, "pred", "gt", "by_conf")
    by_quality = evaluate_pseudo_labels(dataset, "pred", "gt", "by_q", score_field="quality")
    assert by_quality["score_field"] == "quality"
    assert by_quality["pycocotools"]["AP50"] == pytest.approx(1.0)  # every hit first
    assert by_quality["fiftyone"]["AP50"] == pytest.approx(1.0) and by_quality["agree"]
    assert by_confidence["pycocotools"]["AP50"] < 0.6  # every miss first
    assert sorted(set(dataset.values("pred.detections.confidence")[0])) == [0.3, 0.9]
    assert dataset.count_values("pred.detections.by_q") == {"tp": 4, "fp": 4}


def test_signals_side_by_side_on_the_same_labels(dataset):
    rows = {r["signal"]: r for r in compare_signals(dataset, "pred", "gt")}
    assert rows["quality"]["AP50"] == pytest.approx(1.0)
    assert rows["confidence"]["AP50"] < rows["quality"]["AP50"]
    assert rows["sam_iou"]["AP50"] <= 1.0  # ties: ranked, whatever the order
    assert rows["stability"] == {"signal": "stability", "missing": 8}
    with pytest.raises(ValueError, match="8 detections of 'pred' have no 'region_iou'"):
        ranked_view(dataset, "pred", "region_iou")
    assert dataset.list_evaluations() == []  # nothing stored
