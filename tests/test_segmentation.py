"""SAM candidate selection, instance splitting, scores and class overlaps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import EchoPrompter

from diffuprompter_plugin.engine.config import DiffuPrompterConfig
from diffuprompter_plugin.engine.segmentation import select_candidates


def test_select_candidates_picks_highest_iou_with_region():
    target = torch.zeros(2, 10, 10, dtype=torch.bool)
    target[0, 2:6, 2:6] = True  # 16 px
    target[1, 0:10, 0:5] = True  # 50 px
    cands = torch.zeros(2, 3, 10, 10, dtype=torch.bool)
    cands[0, 0, 2:4, 2:4] = True  # IoU 4/16
    cands[0, 1, 2:6, 2:7] = True  # IoU 16/20
    cands[0, 2] = True  # IoU 16/100
    cands[1, 0, 0:10, 0:10] = True  # 0.5
    cands[1, 1, 0:10, 0:4] = True  # 0.8
    cands[1, 2, 0:10, 0:6] = True  # 50/60
    best, ious = select_candidates(cands, target)
    assert best.tolist() == [1, 2]
    assert ious.tolist() == pytest.approx([16 / 20, 50 / 60])


def test_union_is_split_into_instances_with_documented_scores():
    rgb = np.zeros((40, 40, 3), np.uint8)
    heat = np.zeros((40, 40), np.float32)
    heat[2:10, 2:10] = 0.9
    heat[20:30, 20:36] = 0.6
    heat[38, 38] = 0.9  # one-pixel speckle, below min_area
    prompter = EchoPrompter(DiffuPrompterConfig(crf=False, min_area=4))
    found = prompter.segment(rgb, {"vehicle": heat})
    assert [(i.label, i.box, i.area) for i in found] == [
        ("vehicle", (20, 20, 36, 30), 160),
        ("vehicle", (2, 2, 10, 10), 64),
    ]
    assert [round(i.score, 4) for i in found] == [round(0.6 * 0.8, 4), round(0.9 * 0.8, 4)]
    assert found[1].mask.shape == (8, 8) and found[1].mask.dtype == bool and found[1].mask.all()
    assert (
        found[1].full_mask((40, 40)).sum() == 64 and found[1].full_mask((40, 40))[2:10, 2:10].all()
    )


def test_per_class_thresholds_and_empty_maps():
    rgb = np.zeros((32, 32, 3), np.uint8)
    heat = np.zeros((32, 32), np.float32)
    heat[4:12, 4:12] = 0.5
    prompter = EchoPrompter(DiffuPrompterConfig(crf=False))
    assert len(prompter.segment(rgb, {"ship": heat})) == 1
    assert prompter.segment(rgb, {"ship": heat}, thresholds={"ship": 0.6}) == []
    assert prompter.segment(rgb, {"ship": heat}, thresholds=0.7) == []
    assert prompter.segment(rgb, {"ship": np.zeros_like(heat)}) == []


def test_overlapping_classes_go_to_the_higher_heatmap():
    rgb = np.zeros((30, 30, 3), np.uint8)
    ship = np.zeros((30, 30), np.float32)
    harbor = np.zeros((30, 30), np.float32)
    ship[5:15, 5:15] = 0.9
    harbor[5:15, 10:25] = 0.7  # overlaps ship on columns 10..14
    prompter = EchoPrompter(DiffuPrompterConfig(crf=False))
    found = {i.label: i for i in prompter.segment(rgb, {"ship": ship, "harbor": harbor})}
    assert found["ship"].box == (5, 5, 15, 15)
    assert found["harbor"].box == (15, 5, 25, 15)
    assert not (found["ship"].full_mask((30, 30)) & found["harbor"].full_mask((30, 30))).any()


def test_heatmap_size_must_match_image():
    prompter = EchoPrompter(DiffuPrompterConfig(crf=False))
    with pytest.raises(ValueError, match="Heatmap 'ship' is"):
        prompter.segment(np.zeros((32, 32, 3), np.uint8), {"ship": np.ones((16, 16))})


def test_tiny_sam_returns_masks_cropped_to_their_boxes(tiny_diffuprompter, rgb):
    heat = np.zeros(rgb.shape[:2], np.float32)
    heat[10:30, 20:44] = 0.9
    found = tiny_diffuprompter.sam_prompter.segment(rgb, {"storage tank": heat})
    assert found
    for inst in found:
        x0, y0, x1, y1 = inst.box
        assert inst.mask.shape == (y1 - y0, x1 - x0)
        ys, xs = np.nonzero(inst.full_mask(rgb.shape[:2]))
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert inst.area >= tiny_diffuprompter.config.min_area
        assert 0 <= inst.score <= 1
