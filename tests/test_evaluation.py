"""Evaluation: known answers, pycocotools parity, class maps, calibration, export."""

from __future__ import annotations

import copy
import json
import os

import fiftyone as fo
import numpy as np
import pytest
import real_shapes
from helpers import EchoPrompter
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from diffuprompter_plugin.coco import METRIC_NAMES, detection_results, export_coco, full_mask
from diffuprompter_plugin.engine.config import DiffuPrompterConfig
from diffuprompter_plugin.engine.pipeline import Annotation, Annotator
from diffuprompter_plugin.evaluation import (
    calibrate_thresholds,
    evaluate_pseudo_labels,
    iou_index,
    resolve_class_map,
)
from diffuprompter_plugin.importers import import_nwpu_vhr10
from diffuprompter_plugin.labelling import compute_pseudo_labels
from diffuprompter_plugin.rethreshold import rethreshold_pseudo_labels


def _rect(shape, x, y, w, h):
    mask = np.zeros(shape, bool)
    mask[y : y + h, x : x + w] = True
    return mask


def _dataset(tmp_path, scenes, size=(64, 48)):
    """scenes: list of (gt [(label, mask)], pred [(label, mask, score)])."""
    dataset = fo.Dataset()
    for i, (gt, pred) in enumerate(scenes):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path)
        dataset.add_sample(
            fo.Sample(
                filepath=str(path),
                metadata=fo.ImageMetadata(width=size[0], height=size[1]),
                gt=fo.Detections(detections=[fo.Detection.from_mask(m, label=lb) for lb, m in gt]),
                pred=fo.Detections(
                    detections=[
                        fo.Detection.from_mask(m, label=lb, confidence=s) for lb, m, s in pred
                    ]
                ),
            )
        )
    return dataset


def _metric(report, name):
    """(pycocotools, FiftyOne) values of a metric, rounded to 1e-9."""
    return round(report["pycocotools"][name], 9), round(report["fiftyone"][name], 9)


def test_perfect_predictions_score_one(tmp_path):
    shape = (48, 64)
    scenes = [
        (
            [("ship", _rect(shape, 5, 5, 10, 8)), ("harbor", _rect(shape, 30, 10, 20, 20))],
            [
                ("ship", _rect(shape, 5, 5, 10, 8), 0.9),
                ("harbor", _rect(shape, 30, 10, 20, 20), 0.8),
            ],
        )
    ]
    report = evaluate_pseudo_labels(_dataset(tmp_path, scenes), "pred", "gt", "perfect")
    for name in ("AP", "AP50", "AP75"):
        assert _metric(report, name) == (1.0, 1.0)
    for tool in ("pycocotools", "fiftyone"):
        assert report[tool]["per_class"] == pytest.approx({"harbor": 1.0, "ship": 1.0})
    assert report["agree"]


@pytest.mark.parametrize(
    ("width", "shift", "ap", "ap75"),
    [
        (30, 10, 0.1, 0.0),  # IoU 20/40 = 0.50: matches at 0.50 only
        (28, 4, 0.6, 1.0),
    ],  # IoU 24/32 = 0.75: matches at 0.50 ... 0.75
)
def test_iou_exactly_on_thresholds(tmp_path, width, shift, ap, ap75):
    shape = (48, 64)
    scenes = [
        (
            [("ship", _rect(shape, 2, 10, width, 6))],
            [("ship", _rect(shape, 2 + shift, 10, width, 6), 0.9)],
        )
    ]
    report = evaluate_pseudo_labels(_dataset(tmp_path, scenes), "pred", "gt", "shifted")
    assert _metric(report, "AP50") == (1.0, 1.0)
    assert _metric(report, "AP75") == (ap75, ap75)
    assert _metric(report, "AP") == (ap, ap)


def test_iou_index_reads_the_public_iou_threshs(tmp_path):
    shape = (48, 64)
    scenes = [
        ([("ship", _rect(shape, 2, 10, 28, 6))], [("ship", _rect(shape, 6, 10, 28, 6), 0.9)])
    ]
    dataset = _dataset(tmp_path, scenes)
    evaluate_pseudo_labels(dataset, "pred", "gt", "indexed")
    results = dataset.load_evaluation_results("indexed")
    assert [iou_index(results, iou) for iou in (0.5, 0.55, 0.75, 0.95)] == [0, 1, 5, 9]
    assert iou_index(results, 0.75 + 1e-9) == 5  # float noise, as FiftyOne matches
    assert results.precision[iou_index(results, 0.75), 0, 0] == 1.0  # IoU 0.75 matches
    assert results.precision[iou_index(results, 0.8), 0, 0] == 0.0  # IoU 0.8 does not
    with pytest.raises(ValueError, match=r"IoU threshold 0.52 is not one of the evaluation.s"):
        iou_index(results, 0.52)


def test_small_medium_large_ranges(tmp_path):
    shape = (120, 120)
    small, medium, large = (
        _rect(shape, 0, 0, 20, 20),
        _rect(shape, 0, 0, 50, 50),
        _rect(shape, 0, 0, 100, 100),
    )
    scenes = [
        ([("ship", small)], [("ship", small, 0.9)]),
        ([("ship", medium)], []),
        ([("ship", large)], [("ship", large, 0.8)]),
    ]
    report = evaluate_pseudo_labels(_dataset(tmp_path, scenes, (120, 120)), "pred", "gt", "sml")
    coco = report["pycocotools"]
    assert (coco["AP_S"], coco["AP_M"], coco["AP_L"]) == pytest.approx((1.0, 0.0, 1.0))


def test_parity_with_pycocotools_on_random_sets(tmp_path):
    rng = np.random.default_rng(7)
    shape = (48, 64)
    scenes = []
    for _ in range(12):
        gt, pred = [], []
        for _ in range(rng.integers(1, 4)):
            label = str(rng.choice(["ship", "storage tank"]))
            x, y, w, h = (
                rng.integers(0, 40),
                rng.integers(0, 30),
                rng.integers(4, 20),
                rng.integers(4, 16),
            )
            gt.append((label, _rect(shape, x, y, w, h)))
            if rng.random() < 0.8:
                dx, dy = rng.integers(-3, 4, 2)
                box = _rect(shape, max(0, x + dx), max(0, y + dy), w, h)
                pred.append((label, box, float(rng.random())))
        for _ in range(rng.integers(0, 3)):
            x, y = rng.integers(0, 50), rng.integers(0, 35)
            pred.append(("ship", _rect(shape, x, y, 8, 8), float(rng.random())))
        scenes.append((gt, pred))
    report = evaluate_pseudo_labels(_dataset(tmp_path, scenes), "pred", "gt", "random")
    assert 0.1 < report["pycocotools"]["AP"] < 0.95
    assert report["agree"]
    for name in ("AP", "AP50", "AP75"):
        fo_value, coco_value = report["fiftyone"][name], report["pycocotools"][name]
        assert fo_value == pytest.approx(coco_value, abs=1e-9)
    for name, value in report["fiftyone"]["per_class"].items():
        assert value == pytest.approx(report["pycocotools"]["per_class"][name], abs=1e-9)


def test_stored_evaluation_run_maps_ground_truth_names(tmp_path):
    shape = (48, 64)
    scenes = [
        (
            [
                ("plane", _rect(shape, 1, 1, 9, 9)),
                ("Small_Vehicle", _rect(shape, 20, 1, 5, 5)),
                ("Large_Vehicle", _rect(shape, 30, 1, 9, 5)),
                ("Helicopter", _rect(shape, 1, 30, 9, 9)),
            ],
            [
                ("airplane", _rect(shape, 1, 1, 9, 9), 0.9),
                ("vehicle", _rect(shape, 20, 1, 5, 5), 0.7),
            ],
        )
    ]
    dataset = _dataset(tmp_path, scenes)
    report = evaluate_pseudo_labels(dataset, "pred", "gt", "mapped")
    assert report["classes"] == ["airplane", "vehicle"]
    assert report["unmatched_gt_classes"] == ["Helicopter"]
    assert report["pycocotools"]["per_class"]["airplane"] == pytest.approx(1.0)
    assert report["pycocotools"]["per_class"]["vehicle"] == pytest.approx(0.5, abs=0.01)
    assert dataset.list_evaluations() == ["mapped"]
    assert dataset.first()["mapped_tp"] == 2 and dataset.first()["mapped_fn"] == 1
    view = dataset.load_evaluation_view("mapped")
    assert set(view.distinct("gt.detections.label")) == {"airplane", "vehicle"}


def test_class_map_cases():
    mapping, unmatched = resolve_class_map(
        ["Ground_Track_Field", "playground", "storage_tank", "Soccer_ball_field", "Bridge"]
    )
    assert mapping == {
        "Ground_Track_Field": "ground track field",
        "playground": "ground track field",
        "storage_tank": "storage tank",
        "Bridge": "bridge",
    }
    assert unmatched == ["Soccer_ball_field"]
    mapping, unmatched = resolve_class_map(["Soccer_ball_field"], {"soccer ball field": "x"})
    assert mapping == {"Soccer_ball_field": "x"} and unmatched == []
    mapping, unmatched = resolve_class_map(["Oil_tank", "Ship"], None, ["oil tank", "hull"])
    assert mapping == {"Oil_tank": "oil tank", "Ship": "ship"} and unmatched == []  # same names
    with pytest.raises(ValueError, match="class_map names ground-truth class 'tank'"):
        resolve_class_map(["ship"], {"tank": "storage tank"})


def test_bad_inputs_get_clear_errors(tmp_path):
    shape = (48, 64)
    scenes = [([("ship", _rect(shape, 5, 5, 10, 8))], [("ship", _rect(shape, 5, 5, 10, 8), 0.9)])]
    dataset = _dataset(tmp_path, scenes)
    dataset.first().pred.detections[0].confidence = None
    sample = dataset.first()
    sample.pred.detections[0].confidence = None
    sample.save()
    with pytest.raises(ValueError, match="1 predictions in 'pred' have no confidence"):
        evaluate_pseudo_labels(dataset, "pred", "gt", "bad")
    with pytest.raises(ValueError, match="Field 'nope' does not exist"):
        evaluate_pseudo_labels(dataset, "nope", "gt", "bad")
    dataset.add_sample_field("empty", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    with pytest.raises(ValueError, match="Prediction field 'empty' holds no objects"):
        evaluate_pseudo_labels(dataset, "empty", "gt", "bad")
    assert dataset.list_evaluations() == []


def test_export_round_trips_through_pycocotools(tmp_path):
    shape = (48, 64)
    ring = _rect(shape, 10, 10, 20, 20) & ~_rect(shape, 15, 15, 10, 10)
    scenes = [([], [("harbor", ring, 0.7), ("ship", _rect(shape, 40, 30, 6, 3), 0.4)])]
    dataset = _dataset(tmp_path, scenes)
    path = tmp_path / "export" / "pseudo.json"
    assert export_coco(dataset, "pred", path) == {"images": 1, "annotations": 2, "categories": 2}
    coco = COCO(str(path))
    anns = coco.loadAnns(coco.getAnnIds())
    by_name = {coco.cats[a["category_id"]]["name"]: a for a in anns}
    assert by_name["harbor"]["area"] == ring.sum() == 300
    np.testing.assert_array_equal(coco.annToMask(by_name["harbor"]).astype(bool), ring)
    assert by_name["ship"]["score"] == 0.4
    det = dataset.first().pred.detections[0]
    np.testing.assert_array_equal(full_mask(det, 64, 48), ring)


class SquareModel(Annotator):
    """Heatmap 0.6 on a 12 x 12 square, 0.35 on a ring around it, 0.1 elsewhere."""

    config = DiffuPrompterConfig(crf=False, min_area=4)

    def annotate(self, image, class_names, thresholds=None):
        heat = np.full((48, 64), 0.1, np.float32)
        heat[6:30, 14:38] = 0.35
        heat[12:24, 20:32] = 0.6
        return Annotation({n: heat for n in class_names}, [])


def test_calibration_picks_per_class_thresholds(tmp_path):
    shape = (48, 64)
    scenes = [([("ship", _rect(shape, 20, 12, 12, 12))], []) for _ in range(3)]
    dataset = _dataset(tmp_path, scenes)
    dataset.persistent = True
    try:
        compute_pseudo_labels(dataset, "dp", classes=["ship"], model=SquareModel())
        out = tmp_path / "thresholds.json"
        prompter = EchoPrompter(SquareModel.config)
        report = calibrate_thresholds(
            dataset, "dp", "gt", out, thresholds=(0.2, 0.4, 0.5), prompter=prompter
        )
        assert report["sweep"]["0.2"]["ship"] == 0.0  # the 24 x 24 ring blob: IoU 0.25
        assert report["thresholds"] == {"ship": 0.4}
        assert report["ap"] == pytest.approx({"ship": 1.0})
        assert json.loads(out.read_text())["thresholds"] == {"ship": 0.4}
        assert not dataset.has_sample_field("calibration_dp")
        summary = rethreshold_pseudo_labels(
            dataset, "dp", "calibrated", thresholds=str(out), prompter=prompter
        )
        assert summary["instances"] == 3
    finally:
        dataset.delete()


def test_evaluation_leaves_no_metadata_gap(tmp_path):
    shape = (48, 64)
    scenes = [([("ship", _rect(shape, 5, 5, 10, 8))], [("ship", _rect(shape, 5, 5, 10, 8), 0.9)])]
    dataset = _dataset(tmp_path, scenes)
    sample = dataset.first()
    sample.metadata = None
    sample.save()
    report = evaluate_pseudo_labels(dataset, "pred", "gt", "meta")
    assert report["pycocotools"]["AP"] == pytest.approx(1.0)
    assert dataset.first().metadata.width == 64
    assert os.path.isfile(dataset.first().filepath)


def test_evaluate_operator_reports_table_and_pr_curves(tmp_path):
    import fiftyone.operators as foo

    shape = (48, 64)
    scenes = [([("ship", _rect(shape, 5, 5, 10, 8))], [("ship", _rect(shape, 5, 5, 10, 8), 0.9)])]
    dataset = _dataset(tmp_path, scenes)
    dataset.persistent = True
    try:
        op = foo.get_operator("@diffuprompter/diffuprompter/evaluate_pseudo_labels")
        out = op(dataset, "pred", "gt", "op_eval").result
        assert out["table"][0]["class"] == "all"
        assert out["table"][0]["AP"] == pytest.approx(1.0)
        assert [t["name"] for t in out["pr_curves"]] == ["ship"]
        assert os.path.getsize(out["pr_curves_file"]) > 1000
        assert dataset.list_evaluations() == ["op_eval"]
    finally:
        dataset.delete()


def _nwpu_from_coco(root, gt):
    """An NWPU VHR-10 folder whose mask JSON is ``gt``: one box line per
    instance, images of the JSON's sizes."""
    positives = root / "positive image set"
    positives.mkdir(parents=True)
    (root / "ground truth").mkdir()
    for image in gt["images"]:
        size = (image["height"], image["width"], 3)
        Image.fromarray(np.zeros(size, np.uint8)).save(positives / image["file_name"])
        lines = [
            "({},{}),({},{}),1".format(*map(int, (x, y, x + w, y + h)))
            for a in gt["annotations"]
            if a["image_id"] == image["id"]
            for x, y, w, h in [a["bbox"]]
        ]
        (root / "ground truth" / image["file_name"].replace(".jpg", ".txt")).write_text(
            "\n".join(lines)
        )
    (root / "annotations.json").write_text(json.dumps(gt))


@pytest.fixture
def real_shapes_dataset(tmp_path):
    """NWPU import of the real-shaped polygon set, and its COCO JSON."""
    name = f"real-shapes-{os.urandom(4).hex()}"
    gt = real_shapes.coco_json()
    root = tmp_path / "NWPU VHR-10 dataset"
    _nwpu_from_coco(root, gt)
    import_nwpu_vhr10(root, name)
    dataset = fo.load_dataset(name)
    yield dataset, gt, root / "annotations.json"
    dataset.delete()


def _add_results(dataset, gt, results, field="pred"):
    """Stores pycocotools results (RLE) as a Detections field."""
    files = {im["id"]: im["file_name"] for im in gt["images"]}
    names = {c["id"]: c["name"].replace("_", " ") for c in gt["categories"]}
    for sample in dataset.match_tags("positive"):
        name = os.path.basename(sample.filepath)
        sample[field] = fo.Detections(
            detections=[
                fo.Detection.from_mask(
                    mask_utils.decode(r["segmentation"]).astype(bool),
                    label=names[r["category_id"]],
                    confidence=r["score"],
                )
                for r in results
                if files[r["image_id"]] == name
            ]
        )
        sample.save()


def _pycocotools(gt_path, results, max_dets=100):
    gt = COCO(str(gt_path))
    evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iouType="segm")
    evaluator.params.maxDets = [1, 10, max_dets]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return dict(zip(METRIC_NAMES, evaluator.stats[:6], strict=True))


def test_ground_truth_against_itself_scores_one_on_real_shapes(real_shapes_dataset):
    dataset, gt, _ = real_shapes_dataset
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "segmentation": a["segmentation"],
            "score": 1.0 - 0.01 * a["id"],
        }
        for a in gt["annotations"]
    ]
    for r in results:  # polygons -> RLE exactly as COCO.annToRLE
        image = gt["images"][r["image_id"]]
        rles = mask_utils.frPyObjects(r["segmentation"], image["height"], image["width"])
        r["segmentation"] = mask_utils.merge(rles)
    _add_results(dataset, gt, results)
    report = evaluate_pseudo_labels(dataset.match_tags("positive"), "pred", "gt_masks", "gt_vs_gt")
    assert [report["pycocotools"][m] for m in METRIC_NAMES] == pytest.approx([1.0] * 6)
    assert (report["fiftyone"]["AP"], report["agree"]) == (1.0, True)


def test_equal_to_pycocotools_run_on_the_json(real_shapes_dataset):
    dataset, gt, gt_path = real_shapes_dataset
    results = real_shapes.predictions(gt)
    _add_results(dataset, gt, results)
    report = evaluate_pseudo_labels(dataset.match_tags("positive"), "pred", "gt_masks", "json")
    official = _pycocotools(gt_path, results)
    assert 0.2 < official["AP"] < 0.9 and official["AP_S"] > -1 and official["AP_L"] > -1
    for name in METRIC_NAMES:
        assert report["pycocotools"][name] == pytest.approx(official[name], abs=1e-12), name
    assert report["fiftyone"]["AP"] == pytest.approx(official["AP"], abs=1e-12)


def test_detection_areas_are_mask_areas(tmp_path):
    shape = (120, 120)
    diagonal = np.eye(20, dtype=bool)
    canvas = np.zeros(shape, bool)
    canvas[:20, :20] = diagonal
    dataset = _dataset(tmp_path, [([], [("ship", canvas, 0.9)])], (120, 120))
    (result,) = detection_results(dataset, "pred", ["ship"])
    assert "bbox" not in result
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "width": 120, "height": 120}], "annotations": []}
    gt.dataset["categories"] = [{"id": 1, "name": "ship"}]
    gt.createIndex()
    with_box = gt.loadRes([{**copy.deepcopy(result), "bbox": [0, 0, 20, 20]}])
    assert with_box.anns[1]["area"] == 400  # what a bbox in the results did
    assert gt.loadRes([copy.deepcopy(result)]).anns[1]["area"] == 20

    # A false positive 2 px wide along a 60-px diagonal: 119 px of mask (small),
    # a 60 x 60 box (medium). Binned by box it left AP_S at 1.0.
    band = np.zeros(shape, bool)
    for i in range(60):
        band[60 + i, 60 + i : 62 + i] = True
    square = _rect(shape, 5, 5, 10, 10)
    scenes = [([("ship", square)], [("ship", band, 0.95), ("ship", square, 0.9)])]
    report = evaluate_pseudo_labels(_dataset(tmp_path, scenes, (120, 120)), "pred", "gt", "area")
    assert report["pycocotools"]["AP_S"] == pytest.approx(0.5)


def test_max_dets_defaults_to_the_dataset_convention(tmp_path):
    shape = (48, 64)
    squares = [_rect(shape, 2 * (k % 30), 4 * (k // 30), 2, 4) for k in range(120)]
    scenes = [([("vehicle", m) for m in squares], [("vehicle", m, 0.5) for m in squares])]
    dataset = _dataset(tmp_path, scenes)
    report = evaluate_pseudo_labels(dataset, "pred", "gt", "coco")
    assert report["max_dets"] == 100
    assert _metric(report, "AP50") == pytest.approx((100 / 120, 100 / 120), abs=0.01)
    dataset.info["max_dets"] = 1000  # what import_isaid records
    dataset.save()
    report = evaluate_pseudo_labels(dataset, "pred", "gt", "isaid")
    assert (report["max_dets"], _metric(report, "AP50")) == (1000, (1.0, 1.0))
    assert _metric(report, "AP") == (1.0, 1.0)  # COCOeval.summarize would give -1
    report = evaluate_pseudo_labels(dataset, "pred", "gt", "explicit", max_dets=10)
    assert report["max_dets"] == 10 and report["pycocotools"]["AP50"] < 0.1


def _assert_nothing_stored(dataset):
    assert dataset.list_evaluations() == []
    assert not [f for f in dataset.get_field_schema() if f.startswith("bad")]
    fields = dataset.get_field_schema(flat=True)
    assert not [f for f in fields if f.endswith(("_tp", "_fp", "_fn", ".bad"))]


def test_bad_input_is_refused_before_anything_is_stored(tmp_path):
    shape = (48, 64)
    square = _rect(shape, 5, 5, 10, 8)
    scenes = [
        ([("ship", square)], [("ship", square, 0.9), ("ship", square, 0.8)]),
        ([("ship", square)], [("ship", square, 0.7)]),
    ]
    dataset = _dataset(tmp_path, scenes)
    first, second = dataset.first(), dataset.last()
    # ground truth with boxes only
    dataset.clone_sample_field("gt", "boxes")
    for sample in dataset:
        for det in sample.boxes.detections:
            det.mask = None
        sample.save()
    with pytest.raises(ValueError, match=r"2 objects of field 'boxes' \(ship\) have no"):
        evaluate_pseudo_labels(dataset, "pred", "boxes", "bad")
    _assert_nothing_stored(dataset)
    # half of the predictions without masks
    first.pred.detections[1].mask = None
    first.save()
    second.pred.detections[0].mask = None
    second.save()
    with pytest.raises(ValueError, match=r"2 objects of field 'pred' \(ship\) have no .*img0"):
        evaluate_pseudo_labels(dataset, "pred", "gt", "bad")
    _assert_nothing_stored(dataset)
    # ground-truth classes that map onto nothing
    dataset.clone_sample_field("gt", "odd")
    for sample in dataset:
        for det in sample.odd.detections:
            det.label = "Soccer_ball_field"
        sample.save()
    with pytest.raises(ValueError, match=r"No ground-truth class of 'odd' \(Soccer_ball_field\)"):
        evaluate_pseudo_labels(dataset, "pred", "odd", "bad")
    _assert_nothing_stored(dataset)
    # a missing image file without metadata
    os.remove(second.filepath)
    second.metadata = None
    second.save()
    with pytest.raises(ValueError, match=r"Cannot read the size of 1 image.*img1\.png"):
        evaluate_pseudo_labels(dataset, "pred", "gt", "bad")
    _assert_nothing_stored(dataset)


def test_tied_scores_are_ranked_differently_by_fiftyone(tmp_path):
    shape = (48, 64)
    a, b = _rect(shape, 2, 2, 10, 10), _rect(shape, 30, 20, 10, 10)
    scenes = [  # image 0: an FP tied with image 1's TP at 0.5
        ([("ship", a)], [("ship", a, 0.9), ("ship", b, 0.5)]),
        ([("ship", a)], [("ship", a, 0.5)]),
    ]
    report = evaluate_pseudo_labels(_dataset(tmp_path, scenes), "pred", "gt", "ties")
    # pycocotools: image order among ties, TP FP TP -> precision 2/3 at recall 1
    assert report["pycocotools"]["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    # FiftyOne: true positives before false positives among ties -> 1.0
    assert report["fiftyone"]["AP"] == pytest.approx(1.0)
    assert not report["agree"]
    assert report["table"][0]["AP"] == round(report["pycocotools"]["AP"], 4)
