"""Exports that honour the review: COCO (exact RLE, and FiftyOne's traced
polygons beside it), YOLOv5 segmentation and GeoPackage hold exactly the
labels a verdict lets in, read back with pycocotools, FiftyOne's importers
and geopandas."""

from __future__ import annotations

import json
import os

import fiftyone as fo
import geopandas as gpd
import numpy as np
import pytest
from fiftyone import ViewField as F
from pycocotools.coco import COCO
from reviewed import crowded_dataset, ids_by_quality, reviewed_dataset, ring, tag

from diffuprompter_plugin.coco import full_mask
from diffuprompter_plugin.export import export_training_set
from diffuprompter_plugin.geo import export_geo
from diffuprompter_plugin.review import accept_pseudo_labels, review_status


@pytest.fixture
def dataset(tmp_path):
    """The reviewed dataset with verdicts: a person accepts the two worst
    labels and rejects the best; then labels of quality >= 0.7 are accepted
    automatically (and those below 0.3 rejected: one, 0.255)."""
    dataset = reviewed_dataset(str(tmp_path / "images"))
    labels = ids_by_quality(dataset)
    tag(dataset, [i for _, _, i in labels[:2]], "accepted")
    tag(dataset, [labels[-1][2]], "rejected")
    accept_pseudo_labels(dataset, "dp", min_quality=0.7, reject_below=0.3)
    yield dataset
    dataset.delete()


def _labels(dataset, keep):
    """{quality: detection} of the labels whose tags ``keep`` accepts."""
    return {
        det.quality: det
        for sample in dataset
        for det in sample.dp.detections
        if keep(set(det.tags), det.quality)
    }


def _accepted(tags, _):
    return "accepted" in tags and "rejected" not in tags


def test_coco_holds_exactly_the_accepted_labels_with_exact_masks(dataset, tmp_path):
    expected = _labels(dataset, _accepted)
    assert len(expected) == 2 + 3  # two by a person, three of quality >= 0.7
    out = export_training_set(dataset, "dp", tmp_path / "coco")
    assert out["labels"] == 5 and out["writer"] == "FiftyOne COCO + exact RLE"
    coco = COCO(str(tmp_path / "coco" / "labels.json"))
    annotations = coco.loadAnns(coco.getAnnIds())
    assert sorted(a["quality"] for a in annotations) == sorted(expected)
    for ann in annotations:
        image = coco.loadImgs(ann["image_id"])[0]
        assert os.path.exists(tmp_path / "coco" / "data" / image["file_name"])
        truth = full_mask(expected[ann["quality"]], image["width"], image["height"])
        assert np.array_equal(coco.annToMask(ann).astype(bool), truth)
        assert ann["area"] == truth.sum() and ann["iscrowd"] == 0
        assert coco.loadCats(ann["category_id"])[0]["name"] == expected[ann["quality"]].label

    back = fo.Dataset.from_dir(
        dataset_dir=str(tmp_path / "coco"),
        dataset_type=fo.types.COCODetectionDataset,
        label_types="segmentations",
        label_field="ground_truth",
    )
    try:
        read = [d for s in back for d in s.ground_truth.detections]
        assert sorted(d.quality for d in read) == sorted(expected)
        assert all(d.mask.sum() == expected[d.quality].mask.sum() for d in read)
    finally:
        back.delete()


def test_traced_polygons_lose_the_hole_that_rle_keeps(dataset, tmp_path):
    ring_view = dataset.filter_labels("dp", fo.ViewField("quality") == 0.1)  # the worst: a ring
    exact = ring()
    assert exact.sum() == 84  # 10 x 10 less a 4 x 4 hole
    for masks in ("rle", "polygons"):
        export_training_set(ring_view, "dp", tmp_path / masks, masks=masks)
    rle, traced = (COCO(str(tmp_path / m / "labels.json")) for m in ("rle", "polygons"))
    (kept,), (lost,) = (c.loadAnns(c.getAnnIds()) for c in (rle, traced))
    assert isinstance(kept["segmentation"], dict) and isinstance(lost["segmentation"], list)
    assert kept["area"] == 84 and rle.annToMask(kept)[2:12, 2:12].sum() == 84
    assert rle.annToMask(kept)[5:9, 5:9].sum() == 0  # the hole stays a hole
    assert lost["area"] == 100.0  # FiftyOne: the box's w x h
    filled = traced.annToMask(lost)
    assert filled[5:9, 5:9].sum() == 16  # the hole is filled
    exact_full = rle.annToMask(kept).astype(bool)
    assert (filled.astype(bool) != exact_full).sum() >= 16  # and the outline moved


def test_yolo_holds_accepted_and_unreviewed_labels(dataset, tmp_path):
    kept = _labels(dataset, lambda tags, _: "rejected" not in tags)
    out = export_training_set(
        dataset, "dp", tmp_path / "yolo", dataset_type="yolov5", include="accepted+unreviewed"
    )
    rings = sum(d.mask.sum() == 84 for d in kept.values())  # one per sample, if kept
    assert out["labels"] == len(kept) and out["split_instances"] == rings
    back = fo.Dataset.from_dir(
        dataset_dir=str(tmp_path / "yolo"),
        dataset_type=fo.types.YOLOv5Dataset,
        split="train",
        label_type="polylines",
        label_field="ground_truth",
    )
    try:
        rows = back.count("ground_truth.polylines")
        assert rows == len(kept) + rings  # a ring's hole is written as an object of its own
        assert back.count_values("ground_truth.polylines.label") == {
            "ship": sum(d.label == "ship" for d in kept.values()) + rings,
            "tank": sum(d.label == "tank" for d in kept.values()),
        }
    finally:
        back.delete()


def test_a_quality_threshold_lets_in_accepted_and_confident_unreviewed(dataset, tmp_path):
    expected = _labels(
        dataset,
        lambda tags, q: "rejected" not in tags and ("accepted" in tags or q >= 0.5),
    )
    out = export_training_set(dataset, "dp", tmp_path / "t", include=0.5)
    coco = json.loads((tmp_path / "t" / "labels.json").read_text())
    assert sorted(a["quality"] for a in coco["annotations"]) == sorted(expected)
    assert out["labels"] == len(expected) == 5 + 2  # 0.564 and 0.641 are unreviewed


def test_bad_exports_leave_nothing(dataset, tmp_path):
    untouched = reviewed_dataset(str(tmp_path / "fresh"))
    try:
        with pytest.raises(ValueError, match=r"none of the 12 labels of 'dp' is let in"):
            export_training_set(untouched, "dp", tmp_path / "none")
    finally:
        untouched.delete()
    with pytest.raises(ValueError, match="include must be one of"):
        export_training_set(dataset, "dp", tmp_path / "x", include="everything")
    with pytest.raises(ValueError, match="masks='rle' does not apply to yolov5"):
        export_training_set(dataset, "dp", tmp_path / "x", dataset_type="yolov5", masks="rle")
    with pytest.raises(ValueError, match="Unknown dataset_type 'voc'"):
        export_training_set(dataset, "dp", tmp_path / "x", dataset_type="voc")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty; pass overwrite=True"):
        export_training_set(dataset, "dp", tmp_path / "full")
    assert sorted(os.listdir(tmp_path)) == ["fresh", "full", "images"]  # no staging folders
    export_training_set(dataset, "dp", tmp_path / "full", overwrite=True)
    assert not (tmp_path / "full" / "keep.txt").exists()
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(ValueError, match="'.*a_file' is a file"):
        export_training_set(dataset, "dp", tmp_path / "a_file")
    with pytest.raises(ValueError):  # FiftyOne refuses the media mode once the export starts
        export_training_set(dataset, "dp", tmp_path / "new" / "run1" / "train", export_media="x")
    assert not (tmp_path / "new").exists()  # the folders it made for it are gone too


def test_a_rejection_the_run_made_is_void_once_a_person_fixes_the_label(dataset, tmp_path):
    from reviewed import edit

    from diffuprompter_plugin.export import training_view

    rejected = dataset.filter_labels("dp", F("tags").contains("auto_rejected"))
    (label_id,) = rejected.values("dp.detections.id", unwind=True)
    edit(dataset, label_id, label="hull")  # a person fixed its class

    def kept(include):
        return set(training_view(dataset, "dp", include).values("dp.detections.id", unwind=True))

    assert label_id in kept("accepted+unreviewed") and label_id in kept(0.5)
    assert label_id not in kept("accepted")  # no verdict of the person's
    tag(dataset, [label_id], "accepted")  # accepted without untagging: conflicting
    assert all(label_id not in kept(i) for i in ("accepted", "accepted+unreviewed", 0.5))


def test_an_export_from_the_apps_patches_view_holds_its_labels(dataset, tmp_path):
    patches = dataset.to_patches("dp").match_labels(tags="accepted", fields="dp")
    for dataset_type in ("coco", "yolov5"):
        out = export_training_set(patches, "dp", tmp_path / dataset_type, dataset_type)
        assert out["labels"] == len(_labels(dataset, _accepted)) == 5
    coco = json.loads((tmp_path / "coco" / "labels.json").read_text())
    assert sorted(a["quality"] for a in coco["annotations"]) == sorted(_labels(dataset, _accepted))
    rows = [
        line
        for name in os.listdir(tmp_path / "yolov5" / "labels" / "train")
        for line in (tmp_path / "yolov5" / "labels" / "train" / name).read_text().splitlines()
    ]
    assert len(rows) == 5 + out["split_instances"]  # one row per ring of each mask


def test_geopackage_holds_the_accepted_labels_with_quality_and_verdict(dataset, tmp_path):
    expected = _labels(dataset, _accepted)
    out = export_geo(dataset, "dp", tmp_path / "accepted.gpkg", include="accepted")
    frame = gpd.read_file(tmp_path / "accepted.gpkg")
    assert out["features"] == len(frame) == len(expected)
    assert sorted(frame["detection_id"]) == sorted(d.id for d in expected.values())
    assert sorted(frame["quality"]) == sorted(expected)
    assert set(frame["verdict"]) == {"accepted"}
    everything = gpd.read_file(export_geo(dataset, "dp", tmp_path / "all.gpkg")["path"])
    assert len(everything) == 12
    assert everything["verdict"].value_counts().to_dict() == {
        "accepted": 5, "unreviewed": 5, "rejected": 2,
    }  # fmt: skip


def test_geo_exports_read_a_persons_work_and_leave_nothing_when_they_fail(
    dataset, tmp_path, monkeypatch
):
    from reviewed import edit

    rejected = dataset.filter_labels("dp", F("tags").contains("auto_rejected"))
    (fixed,) = rejected.values("dp.detections.id", unwind=True)
    edit(dataset, fixed, label="hull")  # a person fixed what the run rejected
    patches = dataset.to_patches("dp")  # the App's view after a review by patch
    out = export_geo(patches, "dp", tmp_path / "mine.gpkg", include="accepted+unreviewed")
    frame = gpd.read_file(out["path"]).set_index("detection_id")
    assert out["features"] == 11  # all but the person's own rejection
    assert frame.loc[fixed, "verdict"] == "unreviewed" and np.isnan(frame.loc[fixed, "quality"])

    untouched = reviewed_dataset(str(tmp_path / "fresh"))
    try:
        for name in ("none.gpkg", "none.geojson"):
            with pytest.raises(ValueError, match=r"Nothing to export: none of the 12 labels"):
                export_geo(untouched, "dp", tmp_path / name, include="accepted")
    finally:
        untouched.delete()
    with pytest.raises(ValueError, match="cannot hold a layer named 'gpkg_contents'"):
        export_geo(dataset, "dp", tmp_path / "x.gpkg", layer="gpkg_contents")

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(gpd.GeoDataFrame, "to_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export_geo(dataset, "dp", tmp_path / "new" / "deeper" / "x.gpkg")
    assert sorted(os.listdir(tmp_path)) == ["fresh", "images", "mine.gpkg"]


def test_the_readme_worked_example(tmp_path):
    """The README's two review blocks, with the calibration sample tagged
    in between as a person would (from each label's known correctness)."""
    from test_readme import README, python_blocks

    blocks = [
        b for b in python_blocks(README.read_text())
        if "review_view(" in b or "calibrate_acceptance(" in b
    ]  # fmt: skip
    assert len(blocks) == 2
    dataset = crowded_dataset(str(tmp_path / "scenes"))
    namespace: dict = {}
    try:
        first = blocks[0].replace(
            'fo.load_dataset("scenes")', f'fo.load_dataset("{dataset.name}")'
        )
        exec(compile(first, "README review block 1", "exec"), namespace)
        sample = namespace["sample"]
        assert sample.count("dp_instances.detections") == 240  # 120 per class
        for verdict, truth in (("accepted", True), ("rejected", False)):
            chosen = sample.filter_labels("dp_instances", fo.ViewField("truth") == truth)
            chosen.tag_labels([verdict], label_fields=["dp_instances"])
        second = blocks[1].replace('"/data/', f'"{tmp_path}/')
        exec(compile(second, "README review block 2", "exec"), namespace)

        accepted = dataset.filter_labels("dp_instances", fo.ViewField("tags").contains("accepted"))
        qualities = sorted(accepted.values("dp_instances.detections.quality", unwind=True))
        coco = json.loads((tmp_path / "train_coco" / "labels.json").read_text())
        assert sorted(a["quality"] for a in coco["annotations"]) == qualities
        frame = gpd.read_file(tmp_path / "accepted.gpkg")
        assert sorted(frame["quality"]) == qualities and set(frame["verdict"]) == {"accepted"}
        assert (tmp_path / "train_yolo" / "dataset.yaml").exists()
        calibration = namespace["calibration"]
        assert all(r.judged == 120 for r in calibration.classes.values())
        assert all(r.decided and r.threshold >= 0.3 for r in calibration.classes.values())
        rows = {r["class"]: r for r in review_status(dataset, "dp_instances")["rows"]}
        for name, result in calibration.classes.items():
            assert rows[name]["auto_accepted"] == result.would_accept
    finally:
        dataset.delete()
