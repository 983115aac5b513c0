"""Runs that never share or inherit state, and input refused up front
(issue 22): heatmap folders kept through renames, runs stored before run
ids, heatmaps lost mid-run, threshold input, field names, exact counts, and
claims of deleted runs and datasets."""

from __future__ import annotations

import os
import shutil

import pytest
from fiftyone.core.odm import get_db_conn
from helpers import TINY_CONFIG, EchoPrompter, StubModel

from diffuprompter_plugin import pseudo_labels_status
from diffuprompter_plugin.brain import PseudoLabels
from diffuprompter_plugin.claims import CLAIMS
from diffuprompter_plugin.labelling import compute_pseudo_labels, resume_pseudo_labels
from diffuprompter_plugin.rethreshold import rethreshold_pseudo_labels


def _pngs(folder):
    return sorted(os.listdir(os.path.join(folder, "ship")))


def test_a_renamed_run_keeps_its_heatmaps_when_a_new_run_takes_its_key(image_dataset):
    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=StubModel())
    old = image_dataset.get_brain_info("dp").config.heatmap_dir
    image_dataset.rename_brain_run("dp", "dp_old")
    compute_pseudo_labels(
        image_dataset,
        "dp",
        classes=["ship"],
        model=StubModel(),
        pred_field="new",
        heatmap_field="nh",
    )
    new = image_dataset.get_brain_info("dp").config.heatmap_dir
    assert new != old and len(_pngs(old)) == len(_pngs(new)) == 4
    image_dataset.delete_brain_run("dp")
    assert not os.path.exists(new) and len(_pngs(old)) == 4
    echo = EchoPrompter(TINY_CONFIG)
    summary = rethreshold_pseudo_labels(image_dataset, "dp_old", "dp_rt", 0.5, prompter=echo)
    assert (summary["samples"], summary["failures"]) == (4, {})
    assert image_dataset.count("dp_rt.detections") > 0


def test_a_run_stored_before_run_ids_loads_resumes_and_keeps_its_folder(image_dataset):
    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=StubModel())
    config = image_dataset.get_brain_info("dp").config
    legacy = os.path.join(os.path.dirname(config.heatmap_dir), "dp")  # the old layout
    shutil.move(config.heatmap_dir, legacy)
    for sample in image_dataset:
        sample["dp_heatmap_ship"].map_path = os.path.join(legacy, "ship", f"{sample.id}.png")
        sample.save()
    config.heatmap_dir, config.run_id = legacy, None
    PseudoLabels.update_run_config(image_dataset, "dp", config)
    image_dataset.reload()
    stored = get_db_conn().runs.find_one({"key": "dp", "_dataset_id": image_dataset._doc.id})
    assert stored["config"].get("run_id") is None
    image_dataset.limit(1).set_field("dp_instances", None).save()
    results = resume_pseudo_labels(image_dataset, "dp", model=StubModel())
    assert results.processed == 4
    stored = image_dataset.get_brain_info("dp").config
    assert stored.heatmap_dir == legacy and stored.run_id is not None  # given an id on resume
    assert len(_pngs(legacy)) == 4


def test_status_counts_exactly_when_mongodbs_estimate_is_wrong(image_dataset, monkeypatch):
    import pymongo.collection

    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=StubModel())
    # after a kill -9 and restart, MongoDB's collection metadata may say 0
    monkeypatch.setattr(
        pymongo.collection.Collection, "estimated_document_count", lambda *a, **k: 0
    )
    status = pseudo_labels_status(image_dataset, "dp")
    assert (status["total"], status["done"], status["pending"]) == (4, 4, 0)


def _claims_of(dataset_id):
    return get_db_conn()[CLAIMS].count_documents(
        {"$or": [{"dataset": dataset_id}, {"run": {"$regex": f"^{dataset_id}"}}]}
    )


def _interrupted(dataset, brain_key="dp"):
    """A run stopped after two of its four samples: its pool (two done,
    two pending) is left."""
    with pytest.raises(KeyboardInterrupt):
        compute_pseudo_labels(
            dataset, brain_key, classes=["ship"], model=StubModel(fail_after=2), batch_size=1
        )
    return str(dataset._doc.id)


def test_deleting_a_run_or_its_dataset_leaves_no_claims(image_dataset, tmp_path):
    import fiftyone as fo

    from diffuprompter_plugin import cleanup_claims

    dataset_id = _interrupted(image_dataset)
    assert _claims_of(dataset_id) == 4
    image_dataset.delete_brain_run("dp")
    assert _claims_of(dataset_id) == 0

    other = fo.Dataset()
    other.add_samples([fo.Sample(filepath=s.filepath) for s in image_dataset])
    other_id = _interrupted(other)
    other.delete()  # FiftyOne deletes its runs without their cleanup
    # a claim in the format of earlier versions, of a dataset long gone
    orphan = {"run": f"{other_id}:old", "sample": "x", "state": "pending"}
    get_db_conn()[CLAIMS].insert_one(dict(orphan))
    assert _claims_of(other_id) == 5
    assert cleanup_claims() == {"claims": 5, "workers": 0}
    assert _claims_of(other_id) == 0
    _interrupted(image_dataset, "live")
    get_db_conn()[CLAIMS].insert_one(dict(orphan))
    assert pseudo_labels_status(image_dataset, "live")["pending"] == 2  # a status call cleans up
    assert _claims_of(other_id) == 0
    assert _claims_of(dataset_id) == 4  # a live run's claims are kept


@pytest.mark.parametrize(
    "thresholds, message",
    [
        (
            {"shipp": 0.99},
            r"class 'shipp', which is not one of the run's classes \['ship', 'harbor'\]",
        ),
        (
            {"Ship": 0.99},
            r"class 'Ship', which is not one of the run's classes \['ship', 'harbor'\]",
        ),
        ({"ship": None}, r"Threshold for 'ship' is null"),
        ({"harbor": 1.5}, r"Threshold for 'harbor'=1.5 must be "),
        (0.0, r"Threshold for all classes=0.0 must be "),
    ],
)
def test_bad_thresholds_are_refused_before_anything_is_recorded(
    image_dataset, tmp_path, thresholds, message
):
    import json

    from diffuprompter_plugin.engine.config import SETTINGS

    compute_pseudo_labels(image_dataset, "dp", classes=["ship", "harbor"], model=StubModel())
    fields = set(image_dataset.get_field_schema())
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"thresholds": thresholds}))
    echo = EchoPrompter(TINY_CONFIG)
    for given in (thresholds, str(path)) if isinstance(thresholds, dict) else (thresholds,):
        with pytest.raises(ValueError, match=message) as refused:
            rethreshold_pseudo_labels(image_dataset, "dp", "dp_rt", given, prompter=echo)
        if "must be" in message:  # the range is the threshold setting's own
            assert SETTINGS["threshold"].rule() in str(refused.value)
    image_dataset.reload()
    assert set(image_dataset.get_field_schema()) == fields
    assert image_dataset.get_brain_info("dp").config.rethreshold_fields == []
    summary = rethreshold_pseudo_labels(image_dataset, "dp", "dp_rt", {"ship": 0.5}, prompter=echo)
    assert summary["samples"] == 4  # a corrected call works


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"heatmap_field": "_id"}, r"Invalid heatmap_field '_id'"),
        ({"pred_field": "_dp"}, r"Invalid pred_field '_dp'"),
        ({"pred_field": "dp.instances"}, r"Invalid pred_field 'dp.instances'"),
        ({"heatmap_field": "dp$h"}, r"Invalid heatmap_field 'dp\$h'"),
        ({"pred_field": "ground_truth"}, r"\['ground_truth'\] already exist"),
        ({"heatmap_field": "ground"}, r"\['ground_truth'\] already exist"),  # ground_truth class
    ],
)
def test_bad_field_names_are_refused_before_anything_is_written_and_a_retry_works(
    image_dataset, fields, message
):
    before = set(image_dataset.get_field_schema())
    classes = ["truth"] if fields.get("heatmap_field") == "ground" else ["ship"]
    with pytest.raises(ValueError, match=message):
        compute_pseudo_labels(image_dataset, "dp", classes=classes, model=StubModel(), **fields)
    image_dataset.reload()
    assert image_dataset.list_brain_runs() == []
    assert set(image_dataset.get_field_schema()) == before
    results = compute_pseudo_labels(image_dataset, "dp", classes=classes, model=StubModel())
    assert results.processed == 4


def test_rethreshold_refuses_reserved_and_foreign_output_fields(image_dataset):
    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=StubModel())
    echo = EchoPrompter(TINY_CONFIG)
    truth = image_dataset.values("ground_truth.label")
    for field, message in [
        ("_rt", r"Invalid out_field '_rt'"),
        ("rt.x", r"Invalid out_field 'rt.x'"),
        ("ground_truth", r"Field 'ground_truth' exists and is not one that re-thresholding"),
    ]:
        with pytest.raises(ValueError, match=message):
            rethreshold_pseudo_labels(image_dataset, "dp", field, 0.5, prompter=echo)
    assert image_dataset.values("ground_truth.label") == truth
    assert image_dataset.get_brain_info("dp").config.rethreshold_fields == []
    for _ in range(2):  # its own field may be written again
        rethreshold_pseudo_labels(image_dataset, "dp", "dp_rt", 0.5, prompter=echo)
    assert image_dataset.count("dp_rt") == 4


def test_lost_heatmaps_fail_only_their_samples_and_resume_computes_them_again(image_dataset):
    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=StubModel())
    lost = image_dataset.limit(2)
    lost_ids, files = lost.values("id"), lost.values("dp_heatmap_ship.map_path")
    for path in files:
        os.remove(path)
    status = pseudo_labels_status(image_dataset, "dp")
    assert (status["done"], status["lost_heatmaps"]) == (4, 2)
    echo = EchoPrompter(TINY_CONFIG)
    summary = rethreshold_pseudo_labels(image_dataset, "dp", "dp_rt", 0.5, prompter=echo)
    assert sorted(summary["failures"]) == sorted(lost_ids)
    for sample_id, path in zip(lost_ids, files, strict=True):
        assert path in summary["failures"][sample_id]  # names the missing file
    assert image_dataset.count("dp_rt") == 2  # the others went on
    model = StubModel()
    results = resume_pseudo_labels(image_dataset, "dp", model=model)
    assert len(model.calls) == 2 and results.processed == 4
    assert all(os.path.exists(p) for p in files)
    assert pseudo_labels_status(image_dataset, "dp")["lost_heatmaps"] == 0
    summary = rethreshold_pseudo_labels(image_dataset, "dp", "dp_rt", 0.5, prompter=echo)
    assert summary["failures"] == {} and image_dataset.count("dp_rt") == 4


class _Deleter(StubModel):
    """A stub that, on its second sample, deletes its run (or its whole
    dataset) from another handle, as another process would."""

    def __init__(self, name, whole_dataset=False):
        super().__init__()
        self.name, self.whole_dataset = name, whole_dataset

    def annotate(self, image, class_names, thresholds=None):
        import fiftyone as fo

        if len(self.calls) == 1:
            other = fo.load_dataset(self.name)
            if self.whole_dataset:
                other.delete()
            else:
                other.delete_brain_run("dp")
        return super().annotate(image, class_names, thresholds)


@pytest.mark.parametrize("whole_dataset", [False, True])
def test_a_run_deleted_while_it_labels_stops_and_leaves_nothing(image_dataset, whole_dataset):
    import fiftyone as fo

    from diffuprompter_plugin import RunDeletedError
    from diffuprompter_plugin.claims import WORKERS
    from diffuprompter_plugin.labelling import heatmap_root

    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=s.filepath) for s in image_dataset])
    dataset_id, root = str(dataset._doc.id), heatmap_root(dataset)
    model = _Deleter(dataset.name, whole_dataset)
    with pytest.raises(RunDeletedError, match="'dp'.*was deleted while this worker labelled it"):
        compute_pseudo_labels(dataset, "dp", classes=["ship"], model=model, batch_size=1)
    assert len(model.calls) == 2  # stopped at the sample it was computing
    assert _claims_of(dataset_id) == 0
    assert get_db_conn()[WORKERS].count_documents({}) == 0
    assert not os.path.exists(root) or os.listdir(root) == []  # no PNG came back
    collection = get_db_conn()[f"samples.{dataset_id}"]
    for field in ("dp_instances", "dp_instances_error", "dp_heatmap_ship"):
        assert collection.count_documents({field: {"$exists": True}}) == 0
    if not whole_dataset:
        dataset.delete()


def test_a_lost_spread_file_fails_only_its_sample(image_dataset):
    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=StubModel())
    sample = image_dataset.first()
    missing = os.path.join(os.path.dirname(sample.dp_heatmap_ship.map_path), "gone_spread.png")
    sample.dp_heatmap_ship["spread_path"] = missing  # the draws' spread beside the heatmap
    sample.save()
    assert pseudo_labels_status(image_dataset, "dp")["lost_heatmaps"] == 1
    echo = EchoPrompter(TINY_CONFIG)
    summary = rethreshold_pseudo_labels(image_dataset, "dp", "dp_rt", 0.5, prompter=echo)
    assert list(summary["failures"]) == [sample.id] and missing in summary["failures"][sample.id]
    assert image_dataset.count("dp_rt") == 3  # the others went on


def test_rethreshold_refuses_to_take_over_a_users_quality_field(image_dataset):
    import fiftyone as fo

    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=StubModel())
    image_dataset.add_sample_field("dp_rt_quality", fo.FloatField)
    echo = EchoPrompter(TINY_CONFIG)
    with pytest.raises(ValueError, match="Field 'dp_rt_quality' exists"):
        rethreshold_pseudo_labels(image_dataset, "dp", "dp_rt", 0.5, prompter=echo)
    assert "dp_rt" not in image_dataset.get_field_schema()  # nothing written
