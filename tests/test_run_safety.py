"""Runs that never share or inherit state, and input refused up front
(issue 22): heatmap folders kept through renames, runs stored before run
ids, heatmaps lost mid-run, threshold input, field names, exact counts, and
claims of deleted runs and datasets."""

from __future__ import annotations

import os
import shutil

from fiftyone.core.odm import get_db_conn
from helpers import TINY_CONFIG, EchoPrompter, StubModel

from diffuprompter_plugin import pseudo_labels_status
from diffuprompter_plugin.brain import PseudoLabels
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
    assert get_db_conn().runs.find_one({"key": "dp"})["config"].get("run_id") is None
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
