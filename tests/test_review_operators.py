"""The review operators from the SDK, as the App runs them: review (sets the
App's view), accept (threshold and calibrated), status table, exports."""

from __future__ import annotations

import json

import fiftyone.operators as foo
import geopandas as gpd
import pytest
from fiftyone.operators.executor import ExecutionError
from reviewed import ids_by_quality, reviewed_dataset, tag

PLUGIN = "@diffuprompter/diffuprompter"
REVIEW = f"{PLUGIN}/review_pseudo_labels"
ACCEPT = f"{PLUGIN}/accept_pseudo_labels"
STATUS = f"{PLUGIN}/review_status"
EXPORT = f"{PLUGIN}/export_training_set"
EXPORT_GEO = f"{PLUGIN}/export_geo"


@pytest.fixture
def dataset(tmp_path):
    dataset = reviewed_dataset(str(tmp_path / "images"))
    yield dataset
    dataset.delete()


def _status(dataset):
    rows = foo.get_operator(STATUS)(dataset, "dp").result["rows"]
    return {r["class"]: r for r in rows}


def test_review_operator_sets_the_app_view_and_says_what_is_left(dataset):
    tag(dataset, [ids_by_quality(dataset)[0][2]], "rejected")
    result = foo.get_operator(REVIEW)(dataset, "dp", label="tank", patches=True)
    assert result.result["left"] == 6 and result.result["samples"] == 6
    (request,) = result.executor.to_json()["requests"]
    assert request["operator_uri"].endswith("set_view")
    stages = json.dumps(request["params"]["view"])
    assert "ToPatches" in stages and "FilterLabels" in stages and "SortBy" in stages
    calibration = foo.get_operator(REVIEW)(dataset, "dp", order="calibration", size=2, seed=0)
    assert calibration.result["left"] == 4  # two per class
    with pytest.raises(ExecutionError, match="order"):
        foo.get_operator(REVIEW)(dataset, "dp", order="best_first")


def test_accept_operator_with_a_threshold_and_with_calibration(dataset):
    out = foo.get_operator(ACCEPT)(dataset, "dp", min_quality=0.7, reject_below=0.2).result
    assert (out["accepted"], out["rejected"], out["unreviewed"]) == (4, 2, 6)
    assert out["calibration"] == []
    calibrated = foo.get_operator(ACCEPT)(dataset, "dp", target_precision=0.95).result
    assert calibrated["accepted"] == 0  # no person has judged anything: undecided
    rows = {r["class"]: r for r in calibrated["calibration"]}
    assert rows["ship"]["threshold"] is None and rows["ship"]["judged"] == 0
    assert rows["ship"]["more_reviews"] is None  # 59 needed, fewer than that left
    status = _status(dataset)
    assert status["all"]["auto_accepted"] == 4 and status["all"]["auto_rejected"] == 2
    assert status["all"]["unreviewed"] == 6 and status["all"]["precision"] is None


def test_status_operator_counts_a_persons_tags(dataset):
    labels = ids_by_quality(dataset)
    tag(dataset, [i for _, c, i in labels if c == "ship"][:2], "accepted")
    tag(dataset, [i for _, c, i in labels if c == "ship"][2:3], "rejected")
    status = _status(dataset)
    assert (status["ship"]["accepted"], status["ship"]["rejected"]) == (2, 1)
    assert status["ship"]["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert status["tank"]["unreviewed"] == 6 and status["all"]["labels"] == 12


def test_export_operators_honour_the_review(dataset, tmp_path):
    foo.get_operator(ACCEPT)(dataset, "dp", min_quality=0.7, reject_below=0.2)
    out = foo.get_operator(EXPORT)(dataset, "dp", tmp_path / "coco").result
    assert out["labels"] == 4 and out["writer"] == "FiftyOne COCO + exact RLE"
    coco = json.loads((tmp_path / "coco" / "labels.json").read_text())
    assert sorted(a["quality"] for a in coco["annotations"]) == [0.7182, 0.7955, 0.8727, 0.95]
    yolo = foo.get_operator(EXPORT)(
        dataset, "dp", tmp_path / "yolo", dataset_type="yolov5", include=0.5
    ).result
    assert yolo["labels"] == 4 + 2  # and 0.5636, 0.6409 unreviewed
    assert (tmp_path / "yolo" / "dataset.yaml").exists()

    foo.get_operator(EXPORT_GEO)(dataset, "dp", str(tmp_path / "a.gpkg"), include="accepted")
    frame = gpd.read_file(tmp_path / "a.gpkg")
    assert sorted(frame["quality"]) == [0.7182, 0.7955, 0.8727, 0.95]
    every = foo.get_operator(EXPORT_GEO)(dataset, "dp", str(tmp_path / "all.gpkg")).result
    assert every["features"] == 12
    with pytest.raises(ExecutionError, match="include"):
        foo.get_operator(EXPORT)(dataset, "dp", tmp_path / "x", include="nothing_left")
    from operators.export_training_set import include_param

    with pytest.raises(ValueError, match=r"Quality at least: give a quality in \[0, 1\]"):
        include_param({"include": "threshold", "min_quality": None})  # the field cleared
    patches = dataset.to_patches("dp").match_labels(tags="accepted", fields="dp")
    geo = foo.get_operator(EXPORT_GEO)(patches, "dp", str(tmp_path / "p.gpkg")).result
    assert geo["features"] == 4  # the App's view after a review by patch
