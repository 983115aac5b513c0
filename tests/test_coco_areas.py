"""Official COCO areas: where the annotation file gives ``area``, AP_S/AP_M/
AP_L bin ground truth by it, as pycocotools does (issue 22 item 15)."""

from __future__ import annotations

import contextlib
import json
import os

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from diffuprompter_plugin.coco import METRIC_NAMES
from diffuprompter_plugin.evaluation import evaluate_pseudo_labels
from diffuprompter_plugin.importers import import_nwpu_vhr10

SIZE = (240, 200)  # width, height
# (x0, y0, side, official area): the file's areas differ from the pixel
# counts (side^2) and move three objects to another COCO size range
OBJECTS = [
    (10, 10, 30, 1100.0),  # 900 px (small), official medium
    (60, 10, 20, 400.0),  # 400 px, small either way
    (10, 60, 100, 9000.0),  # 10,000 px (large), official medium
    (130, 10, 60, 9500.0),  # 3,600 px (medium), official large
]


def _square(x0, y0, side):
    return [x0, y0, x0 + side, y0, x0 + side, y0 + side, x0, y0 + side]


def _nwpu(root):
    (root / "positive image set").mkdir(parents=True)
    Image.fromarray(np.zeros((SIZE[1], SIZE[0], 3), np.uint8)).save(
        root / "positive image set" / "001.jpg"
    )
    (root / "ground truth").mkdir()
    (root / "ground truth" / "001.txt").write_text("(1,1),(5,5),3\n")
    anns = [
        {
            "id": k + 1,
            "image_id": 1,
            "category_id": 3,
            "segmentation": [_square(x0, y0, side)],
            "bbox": [x0, y0, side, side],
            "area": area,
            "iscrowd": 0,
        }
        for k, (x0, y0, side, area) in enumerate(OBJECTS)
    ]
    data = {
        "images": [{"id": 1, "file_name": "001.jpg", "width": SIZE[0], "height": SIZE[1]}],
        "annotations": anns,
        "categories": [{"id": 3, "name": "storage_tank"}],
    }
    path = root / "NWPU_instances_val.json"
    path.write_text(json.dumps(data))
    return path


def _predictions():
    """(mask, score): the first object found exactly, the second twice
    (a duplicate false positive ranked first), the third shifted (IoU 0.68),
    the fourth found exactly with a low score, and a small false positive."""
    height, width = SIZE[1], SIZE[0]

    def box(x0, y0, w, h):
        mask = np.zeros((height, width), bool)
        mask[y0 : y0 + h, x0 : x0 + w] = True
        return mask

    return [
        (box(10, 10, 30, 30), 0.9),
        (box(60, 10, 20, 20), 0.5),
        (box(60, 10, 20, 20), 0.95),
        (box(30, 60, 100, 100), 0.8),
        (box(130, 10, 60, 60), 0.3),
        (box(200, 150, 25, 25), 0.85),
    ]


def test_official_areas_give_pycocotools_ap_by_size(tmp_path, dataset_name):
    root = tmp_path / "NWPU VHR-10 dataset"
    official = _nwpu(root)
    import_nwpu_vhr10(root, dataset_name, coco_json=official)
    dataset = fo.load_dataset(dataset_name)
    sample = dataset.first()
    sample["pred"] = fo.Detections(
        detections=[
            fo.Detection.from_mask(m, label="storage tank", confidence=s)
            for m, s in _predictions()
        ]
    )
    sample.save()
    report = evaluate_pseudo_labels(dataset, "pred", "gt_masks", "areas")

    # pycocotools on the official JSON, the same predictions as results
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        gt = COCO(str(official))
        results = []
        for mask, score in _predictions():
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            results.append({"image_id": 1, "category_id": 3, "segmentation": rle, "score": score})
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = dict(zip(METRIC_NAMES, evaluator.stats[:6], strict=True))
    ours = report["pycocotools"]
    for name, value in stats.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name
    assert len({round(stats[n], 6) for n in ("AP_S", "AP_M", "AP_L")}) == 3  # all informative

    # the ground truth keeps the file's areas, not its masks' pixel counts
    assert sorted(d.area for d in sample.gt_masks.detections) == sorted(a for *_, a in OBJECTS)
    assert sorted(d.mask.sum() for d in sample.gt_masks.detections) == [400, 900, 3600, 10000]
