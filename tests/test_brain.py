"""The FiftyOne brain method: fields, files, resume, failures, run management."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import TINY_CONFIG, StubModel

from diffuprompter_plugin.brain import PseudoLabelsResults
from diffuprompter_plugin.labelling import compute_pseudo_labels, resume_pseudo_labels
from diffuprompter_plugin.labels import HEATMAP_SCALE, read_heatmap
from diffuprompter_plugin.rethreshold import rethreshold_pseudo_labels


def test_class_field_run_writes_heatmaps_and_instances(image_dataset):
    model = StubModel()
    results = compute_pseudo_labels(image_dataset, "dp", class_field="ground_truth", model=model)
    assert results.processed == 4 and results.failures == {}
    assert results.per_class == {"ship": 2, "storage tank": 1, "harbor": 1}
    sample = image_dataset.first()
    heat = sample["dp_heatmap_ship"]
    assert heat.map_path.endswith(f"{sample.id}.png") and os.path.isfile(heat.map_path)
    ramp = np.linspace(0, 1, 40 * 56, dtype=np.float32).reshape(40, 56)
    assert np.abs(read_heatmap(heat) - ramp).max() <= 0.5 / HEATMAP_SCALE + 1e-7
    (det,) = sample.dp_instances.detections
    assert det.label == "ship" and det.confidence == 0.5
    assert det.bounding_box == pytest.approx([0, 0, 8 / 56, 8 / 40])
    assert det.mask.shape == (8, 8) and det.mask.all()
    assert image_dataset.count("dp_heatmap_storage_tank") == 1  # only its own class


def test_fixed_classes_apply_to_every_sample(image_dataset):
    compute_pseudo_labels(image_dataset, "dp", classes=["ship", "bridge"], model=StubModel())
    assert image_dataset.count("dp_heatmap_bridge") == 4
    assert image_dataset.count_values("dp_instances.detections.label") == {
        "ship": 4,
        "bridge": 4,
    }


def test_failed_sample_is_recorded_and_run_goes_on(image_dataset):
    import fiftyone as fo

    image_dataset.add_sample(
        fo.Sample(filepath="/nonexistent/lost.png", ground_truth=fo.Classification(label="ship"))
    )
    results = compute_pseudo_labels(
        image_dataset, "dp", class_field="ground_truth", model=StubModel()
    )
    assert results.processed == 4
    ((sample_id, error),) = results.failures.items()
    assert "lost.png" in error and "InputImageError" in error
    assert image_dataset[sample_id]["dp_instances_error"] == error
    assert image_dataset.load_brain_results("dp").summary()["failed"] == 1


def test_killed_run_resumes_without_recomputing_or_duplicating(image_dataset):
    with pytest.raises(KeyboardInterrupt):
        compute_pseudo_labels(
            image_dataset,
            "dp",
            class_field="ground_truth",
            model=StubModel(fail_after=2),
            batch_size=1,
        )
    assert image_dataset.count("dp_instances") == 2
    second = StubModel()
    results = compute_pseudo_labels(
        image_dataset, "dp", class_field="ground_truth", model=second, batch_size=1
    )
    assert len(second.calls) == 2  # only the two unfinished samples
    assert results.processed == 4 and results.instances == 4
    assert all(len(d.detections) == 1 for d in image_dataset.values("dp_instances"))
    third = StubModel()
    compute_pseudo_labels(image_dataset, "dp", class_field="ground_truth", model=third)
    assert third.calls == []  # idempotent


def test_one_stream_serves_the_whole_run(image_dataset):
    model = StubModel()
    compute_pseudo_labels(
        image_dataset, "dp", class_field="ground_truth", model=model, batch_size=1
    )
    assert len(model.calls) == 4
    assert model.streams == 1  # four claimed batches, one annotate_all (one CRF pool)


def test_sample_with_more_instances_than_it_can_hold_fails_alone(image_dataset, monkeypatch):
    from diffuprompter_plugin import labels
    from diffuprompter_plugin.engine.segmentation import Instance

    class DenseScene(StubModel):
        """scene_0 holds 50 instances."""

        def annotate(self, image, class_names, thresholds=None):
            annotation = super().annotate(image, class_names, thresholds)
            if str(image).endswith("scene_0.png"):
                annotation.instances *= 50
            return annotation

    monkeypatch.setattr(labels, "MAX_DETECTIONS_BYTES", 4096)  # stands for 15 MB
    results = compute_pseudo_labels(
        image_dataset, "dp", class_field="ground_truth", model=DenseScene(), batch_size=4
    )
    ((sample_id, error),) = results.failures.items()
    sample = image_dataset[sample_id]
    assert sample.filepath.endswith("scene_0.png") and sample.dp_instances is None
    assert "50 instances take" in error and "more than the 0.00390625 MB" in error
    assert sample.dp_heatmap_ship is not None  # its heatmaps are kept
    assert results.processed == 3  # the batch's other samples are stored

    class DenseSegmenter:
        """SAM stand-in: 50 instances on scene_2, one elsewhere."""

        def segment(self, image, heatmaps, thresholds, spreads=None):  # image: the opened one
            count = 50 if image.name.endswith("scene_2.png") else 1
            return [Instance("ship", np.ones((8, 8), bool), (0, 0, 8, 8), 0.5)] * count

    out = rethreshold_pseudo_labels(image_dataset, "dp", "strict", prompter=DenseSegmenter())
    ((dense_id, error),) = out["failures"].items()
    assert image_dataset[dense_id].filepath.endswith("scene_2.png") and "50 instances" in error
    assert out["samples"] == 3 and image_dataset.count("strict") == 2
    with pytest.raises(ValueError, match="1 instances take"):
        noise = np.random.default_rng(0).random((256, 256)) > 0.5  # about 8 kB stored
        labels.to_detections([Instance("ship", noise, (0, 0, 256, 256), 0.5)], 256, 256)


def test_resume_with_other_settings_is_refused(image_dataset, tiny_models):
    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=StubModel())
    with pytest.raises(ValueError, match="exists with different"):
        compute_pseudo_labels(image_dataset, "dp", classes=["harbor"], model=StubModel())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"brain_key": "dp"}, "exactly one of classes"),
        ({"brain_key": "1bad", "classes": ["ship"]}, "Invalid name .1bad."),
        (
            {"brain_key": "dp", "classes": ["ship"], "pred_field": "a-b"},
            "Invalid pred_field .a-b.",
        ),
        ({"brain_key": "dp", "class_field": "nope"}, "Class field 'nope' does not exist"),
        ({"brain_key": "dp", "class_field": "filepath"}, "must be a Classification"),
        ({"brain_key": "dp", "classes": []}, "class_names is empty"),
        ({"brain_key": "dp", "classes": ["ship"], "pred_field": "ground_truth"}, "already exist"),
    ],
)
def test_bad_arguments_fail_before_writing(image_dataset, kwargs, message):
    fields = set(image_dataset.get_field_schema())
    with pytest.raises(ValueError, match=message):
        compute_pseudo_labels(image_dataset, model=StubModel(), **kwargs)
    assert set(image_dataset.get_field_schema()) == fields
    assert image_dataset.list_brain_runs() == []


def test_list_rename_delete_brain_run(image_dataset):
    compute_pseudo_labels(image_dataset, "dp", class_field="ground_truth", model=StubModel())
    assert image_dataset.list_brain_runs(method="diffuprompter") == ["dp"]
    heatmap_dir = image_dataset.get_brain_info("dp").config.heatmap_dir
    assert len(os.listdir(heatmap_dir)) == 3
    image_dataset.rename_brain_run("dp", "dp_v2")
    assert image_dataset.list_brain_runs() == ["dp_v2"]
    assert isinstance(image_dataset.load_brain_results("dp_v2"), PseudoLabelsResults)
    image_dataset.delete_brain_run("dp_v2")
    assert image_dataset.list_brain_runs() == []
    assert not any(f.startswith("dp_") for f in image_dataset.get_field_schema())
    assert not os.path.exists(heatmap_dir)


def test_brain_classes_load_in_another_process(image_dataset):
    compute_pseudo_labels(image_dataset, "dp", class_field="ground_truth", model=StubModel())
    code = (
        "import fiftyone as fo, sys; ds = fo.load_dataset(sys.argv[1]); "
        "r = ds.load_brain_results('dp'); print(type(r).__module__, type(r).__name__, "
        "r.processed)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, image_dataset.name],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert out.stdout.split() == ["diffuprompter_plugin.brain", "PseudoLabelsResults", "4"]


def test_real_tiny_models_then_rethreshold(image_dataset, tiny_models, tmp_path):
    from diffuprompter_plugin import SamPrompter

    sd, sam = tiny_models
    config = TINY_CONFIG.replace(threshold=0.3)
    results = compute_pseudo_labels(
        image_dataset,
        "dp",
        classes=["ship", "harbor"],
        sd_model=sd,
        sam_model=sam,
        device="cpu",
        config=config,
        smoke=True,
    )
    assert results.processed == 4 and results.config.smoke
    assert results.config.models["sd_model"] == sd
    assert image_dataset.count("dp_instances.detections") == results.instances > 0

    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"thresholds": {"ship": 0.25, "harbor": 0.6}}))
    summary = rethreshold_pseudo_labels(
        image_dataset, "dp", "dp_rt", thresholds=str(path), device="cpu"
    )
    assert summary["samples"] == 4
    prompter = SamPrompter.from_pretrained(sam, device="cpu", config=config)
    for sample in image_dataset:
        heatmaps = {n: read_heatmap(sample[f"dp_heatmap_{n}"]) for n in ("ship", "harbor")}
        expected = prompter.segment(sample.filepath, heatmaps, {"ship": 0.25, "harbor": 0.6})
        got = sample.dp_rt.detections
        assert [(d.label, d.mask.sum()) for d in got] == [(i.label, i.area) for i in expected]

    before = {
        s.id: [(d.label, d.mask.sum()) for d in s.dp_instances.detections] for s in image_dataset
    }
    interrupted = image_dataset.limit(2)
    interrupted.set_field("dp_instances", None).save()
    resumed = resume_pseudo_labels(image_dataset, "dp", device="cpu", loop_batch_size=1)
    assert resumed.processed == 4 and resumed.instances == results.instances
    after = {
        s.id: [(d.label, d.mask.sum()) for d in s.dp_instances.detections] for s in image_dataset
    }
    assert after == before  # same models and settings, read from the run


def test_resume_reads_the_run_and_refuses_new_settings(image_dataset):
    first = StubModel(fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        compute_pseudo_labels(image_dataset, "dp", class_field="ground_truth", model=first)
    heatmap_dir = image_dataset.get_brain_info("dp").config.heatmap_dir
    with pytest.raises(ValueError, match="No DiffuPrompter brain run 'other'"):
        resume_pseudo_labels(image_dataset, "other")
    with pytest.raises(ValueError, match=r"not \['loops'\]"):
        resume_pseudo_labels(image_dataset, "dp", loops=10)
    with pytest.raises(ValueError, match="already-built model.*pass model="):
        resume_pseudo_labels(image_dataset, "dp")

    image_dataset.name = f"{image_dataset.name}-renamed"
    second = StubModel()
    results = resume_pseudo_labels(image_dataset, "dp", model=second, crf_workers=2)
    assert len(second.calls) == 3 and results.processed == 4
    assert second.crf_workers_seen == {2}  # applied for the run...
    assert second.config.crf_workers == 0  # ...and given back after it
    paths = image_dataset.values("dp_heatmap_ship.map_path")
    assert all(p is None or p.startswith(heatmap_dir) for p in paths)
    second.config = second.config.replace(threshold=0.5)
    with pytest.raises(ValueError, match=r"different \['threshold'\]"):
        resume_pseudo_labels(image_dataset, "dp", model=second)


def test_rethreshold_bad_input(image_dataset, tmp_path):
    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=StubModel())
    with pytest.raises(ValueError, match="No DiffuPrompter brain run 'other'"):
        rethreshold_pseudo_labels(image_dataset, "other", "x")
    with pytest.raises(ValueError, match="belongs to brain run"):
        rethreshold_pseudo_labels(image_dataset, "dp", "dp_instances", prompter=object())
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        rethreshold_pseudo_labels(image_dataset, "dp", "x", thresholds={"ship": 2})
    bad = tmp_path / "t.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="t.json"):
        rethreshold_pseudo_labels(image_dataset, "dp", "x", thresholds=str(bad))
    with pytest.raises(ValueError, match="already-built model.*pass sam_model="):
        rethreshold_pseudo_labels(image_dataset, "dp", "x")
    assert not image_dataset.has_sample_field("x")


def test_missing_weights_leave_nothing_written(image_dataset, tmp_path):
    from diffuprompter_plugin.engine.errors import ModelUnavailableError

    fields = set(image_dataset.get_field_schema())
    with pytest.raises(ModelUnavailableError, match="sd_model=PATH"):
        compute_pseudo_labels(
            image_dataset, "dp", classes=["ship"], sd_model=str(tmp_path / "absent"), device="cpu"
        )
    assert image_dataset.list_brain_runs() == []
    assert set(image_dataset.get_field_schema()) == fields


def test_resume_may_change_runtime_settings_only(image_dataset):
    from diffuprompter_plugin import DiffuPrompterConfig

    model = StubModel()
    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=model, config=None)
    model.config = DiffuPrompterConfig(loop_batch_size=5, crf_workers=3)
    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=model)
    model.config = DiffuPrompterConfig(loops=10)
    with pytest.raises(ValueError, match=r"different \['loops'\]"):
        compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=model)


def test_resume_refuses_an_invalid_runtime_setting_even_with_nothing_left(image_dataset):
    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=StubModel())
    with pytest.raises(ValueError, match=r"crf_workers=-1 must be >= 0"):
        resume_pseudo_labels(image_dataset, "dp", crf_workers=-1)
    results = resume_pseudo_labels(image_dataset, "dp", crf_workers=1)  # nothing left: no model
    assert results.processed == 4 and results.failures == {}
    assert image_dataset.get_brain_info("dp").config.settings["crf_workers"] == 0


def test_writer_reports_each_batch_once_it_is_saved(image_dataset):
    import fiftyone as fo

    from diffuprompter_plugin.brain import PseudoLabelsConfig
    from diffuprompter_plugin.labelling.record import heatmap_dir
    from diffuprompter_plugin.labelling.run import declare_fields
    from diffuprompter_plugin.labelling.writer import annotate_batches

    folder = heatmap_dir(image_dataset, None, "run1", None)
    record = PseudoLabelsConfig("dp", {"ship": "dp_ship"}, "dp_error", folder, classes=["ship"])
    declare_fields(image_dataset, record)
    ids = image_dataset.values("id")
    image_dataset.select(ids[3]).set_values("dp", [fo.Detections()])  # labelled already
    batches, seen, model = [ids[:2], ids[2:3], ids[3:]], [], StubModel()
    for batch in annotate_batches(image_dataset, model, record, iter(batches)):
        seen.append(batch)
        stored = fo.load_dataset(image_dataset.name).select(batch)
        assert stored.exists("dp").count() == len(batch)  # in the database when reported
    assert sorted(seen) == sorted(batches)
    assert len(model.calls) == 3 and model.streams == 1  # one stream, the labelled one skipped
    assert image_dataset.count("dp_ship") == 3
    assert len(os.listdir(os.path.join(folder, "ship"))) == 3


def test_a_scene_the_writer_cannot_store_leaves_no_temporary_files(
    image_dataset, tmp_path, monkeypatch
):
    import tempfile

    import fiftyone as fo
    from PIL import Image
    from test_tiling import TILED, scene, stub_model

    from diffuprompter_plugin import RunDeletedError
    from diffuprompter_plugin.brain import PseudoLabelsConfig
    from diffuprompter_plugin.labelling.record import heatmap_dir
    from diffuprompter_plugin.labelling.run import declare_fields
    from diffuprompter_plugin.labelling.writer import annotate_batches

    Image.fromarray(scene()).save(tmp_path / "scene.png")  # labelled in tiles
    image_dataset.add_sample(fo.Sample(filepath=str(tmp_path / "scene.png")))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    folder = heatmap_dir(image_dataset, None, "run1", None)
    record = PseudoLabelsConfig("dp", {"car": "dp_car"}, "dp_error", folder, classes=["car"])
    declare_fields(image_dataset, record)

    def deleted() -> None:
        raise RunDeletedError("the run was deleted")

    ids = [image_dataset.last().id]
    with pytest.raises(RunDeletedError):
        list(annotate_batches(image_dataset, stub_model(TILED), record, iter([ids]), deleted))
    assert list(scratch.iterdir()) == []  # the scene's heatmap files were not left behind


def test_a_given_prompter_segments_with_the_runs_settings(image_dataset):
    from helpers import EchoPrompter

    from diffuprompter_plugin.brain import stored_config

    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=StubModel())
    record = stored_config(image_dataset, "dp")
    mine = EchoPrompter(TINY_CONFIG.replace(tile_size=4096))
    used = record.load_prompter(prompter=mine)
    assert used.config == record.engine_config()  # the run's tiling, DenseCRF and SAM
    assert used.config.crf and used.config.tile_size == 1024
    assert mine.config.tile_size == 4096 and not mine.config.crf  # the caller's is untouched
