"""What a new user and faulty input meet (issue 15): odd class lists, bad
arguments refused before anything is written, brain keys taken by other
runs, heatmap folders never shared, and runs deleted with all they wrote."""

from __future__ import annotations

import os
import sys

import fiftyone as fo
import fiftyone.core.utils as fou
import fiftyone.operators as foo
import numpy as np
import pytest
from helpers import TINY_CONFIG, EchoPrompter, StubModel

from diffuprompter_plugin.labelling import compute_pseudo_labels, resume_pseudo_labels
from diffuprompter_plugin.rethreshold import rethreshold_pseudo_labels

RUN = "@diffuprompter/diffuprompter/run_diffuprompter"
LONG_NAME = " ".join(["storage"] * 40)


def _nothing_written(dataset, fields, folder=None):
    assert set(dataset.get_field_schema()) == fields
    assert dataset.list_brain_runs() == []
    if folder is not None:
        assert not os.path.exists(folder)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": ["storage tank", "Storage_Tank"]}, "'storage tank' and 'Storage_Tank'"),
        ({"classes": [LONG_NAME]}, "too long: its field and folder name would be 319"),
        ({"classes": [" ".join(["tank"] * 200)]}, "too long: its field and folder name"),
        ({"classes": ["ship"], "batch_size": 0}, "batch_size must be an integer >= 1, not 0"),
        (
            {"classes": ["error"], "pred_field": "dp", "heatmap_field": "dp"},
            r"Fields \['dp_error'\] would hold both a heatmap",
        ),
        (
            {"classes": ["ship"], "pred_field": "dp_ship", "heatmap_field": "dp"},
            r"Fields \['dp_ship'\] would hold both a heatmap",
        ),
    ],
)
def test_bad_class_lists_and_fields_are_refused_before_writing(image_dataset, kwargs, message):
    fields = set(image_dataset.get_field_schema())
    with pytest.raises(ValueError, match=message):
        compute_pseudo_labels(image_dataset, "dp", model=StubModel(), **kwargs)
    _nothing_written(image_dataset, fields)


def test_class_field_names_sharing_a_field_are_refused(image_dataset):
    sample = image_dataset.first()
    sample["ground_truth"] = fo.Classification(label="Storage_Tank")
    sample.save()
    fields = set(image_dataset.get_field_schema())
    with pytest.raises(ValueError, match="differ only in case"):
        compute_pseudo_labels(image_dataset, "dp", class_field="ground_truth", model=StubModel())
    _nothing_written(image_dataset, fields)


def test_prompt_too_long_for_the_text_encoder_is_refused_before_writing(
    image_dataset, tiny_diffuprompter
):
    fields = set(image_dataset.get_field_schema())
    with pytest.raises(
        ValueError, match="too long for the text encoder: 9[0-9] tokens, at most 77"
    ):
        compute_pseudo_labels(
            image_dataset, "dp", classes=["ship", "x" * 90], model=tiny_diffuprompter
        )
    _nothing_written(image_dataset, fields)


def test_output_dir_that_is_a_file_is_refused_before_writing(image_dataset, tmp_path):
    fields = set(image_dataset.get_field_schema())
    blocker = tmp_path / "heatmaps"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match=f"'{blocker}' is a file; choose another output_dir"):
        compute_pseudo_labels(
            image_dataset, "dp", classes=["ship"], model=StubModel(), output_dir=str(blocker)
        )
    _nothing_written(image_dataset, fields)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_output_dir_not_writable_is_refused_before_writing(image_dataset, tmp_path):
    fields = set(image_dataset.get_field_schema())
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(ValueError, match="is not writable"):
        compute_pseudo_labels(
            image_dataset, "dp", classes=["ship"], model=StubModel(), output_dir=str(locked / "x")
        )
    _nothing_written(image_dataset, fields, locked / "x")


def test_brain_key_of_another_kind_of_run_is_named(image_dataset):
    import fiftyone.brain as fob

    fob.compute_visualization(image_dataset, points=np.random.rand(4, 2), brain_key="vis")
    taken = "Brain key 'vis' is taken by a 'manual' run .*not a DiffuPrompter run"
    with pytest.raises(ValueError, match=taken):
        compute_pseudo_labels(image_dataset, "vis", classes=["ship"], model=StubModel())
    with pytest.raises(ValueError, match=taken):
        resume_pseudo_labels(image_dataset, "vis", model=StubModel())
    with pytest.raises(ValueError, match=taken):
        rethreshold_pseudo_labels(image_dataset, "vis", "x", prompter=EchoPrompter(TINY_CONFIG))
    assert image_dataset.list_brain_runs() == ["vis"]
    assert not image_dataset.has_sample_field("x")


def test_delegating_a_non_persistent_dataset_is_refused(tiny_models):
    dataset = fo.Dataset()
    dataset.add_sample(fo.Sample(filepath="/nowhere.png"))
    try:
        with pytest.raises(ValueError, match=r"not persistent.*dataset.persistent = True"):
            foo.get_operator(RUN)(dataset, "dp", classes=["ship"], delegate=True)
    finally:
        dataset.delete()


def test_heatmap_folders_are_keyed_by_dataset_id(tmp_path):
    datasets = []
    for name in ("p7-a", "p7(a)"):
        dataset = fo.Dataset(name)
        dataset.add_sample(fo.Sample(filepath=str(tmp_path / "scene.png")))
        datasets.append(dataset)
    from PIL import Image

    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(tmp_path / "scene.png")
    try:
        for dataset in datasets:
            compute_pseudo_labels(dataset, "dp", classes=["ship"], model=StubModel())
        first, second = (d.get_brain_info("dp").config.heatmap_dir for d in datasets)
        assert first != second
        run_id = datasets[0].get_brain_info("dp").config.run_id
        assert first.endswith(os.path.join(str(datasets[0]._doc.id), run_id))
        datasets[0].delete_brain_run("dp")
        assert not os.path.exists(first)
        assert len(os.listdir(os.path.join(second, "ship"))) == 1  # the other's are kept
    finally:
        for dataset in datasets:
            dataset.delete()


def test_rerun_with_another_output_dir_is_refused(image_dataset, tmp_path):
    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=StubModel())
    with pytest.raises(ValueError, match=r"different \['heatmap_dir'\]"):
        compute_pseudo_labels(
            image_dataset,
            "dp",
            classes=["ship"],
            model=StubModel(),
            output_dir=str(tmp_path / "new"),
        )
    assert not os.path.exists(tmp_path / "new")


def test_delete_brain_runs_removes_heatmaps_before_dataset_delete(image_dataset):
    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=StubModel())
    folder = image_dataset.get_brain_info("dp").config.heatmap_dir
    assert len(os.listdir(os.path.join(folder, "ship"))) == 4
    image_dataset.delete_brain_runs()  # the README's cleanup before dataset.delete()
    assert not os.path.exists(folder)


def test_deleting_a_run_deletes_its_rethreshold_fields(image_dataset):
    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=StubModel())
    echo = EchoPrompter(TINY_CONFIG)
    for field in ("dp_strict", "dp_loose", "dp_strict"):
        rethreshold_pseudo_labels(image_dataset, "dp", field, thresholds=0.5, prompter=echo)
    assert image_dataset.get_brain_info("dp").config.rethreshold_fields == [
        "dp_strict",
        "dp_loose",
    ]
    assert image_dataset.count("dp_strict") == 4
    image_dataset.delete_brain_run("dp")
    assert not image_dataset.has_sample_field("dp_strict")
    assert not image_dataset.has_sample_field("dp_loose")


def test_run_with_a_pretrained_model_records_its_sources(
    image_dataset, tiny_diffuprompter, tiny_models
):
    sd, sam = tiny_models
    assert tiny_diffuprompter.sources == {"sd_model": sd, "sam_model": sam, "sam_checkpoint": None}
    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=tiny_diffuprompter)
    config = image_dataset.get_brain_info("dp").config
    assert config.models == tiny_diffuprompter.sources
    assert config.models_recorded
    summary = rethreshold_pseudo_labels(image_dataset, "dp", "dp_strict", thresholds=0.9)
    assert summary["samples"] == 4  # SAM rebuilt from the recorded folder
    assert resume_pseudo_labels(image_dataset, "dp", device="cpu").processed == 4


def test_delegated_progress_label_counts_samples():
    forms = sys.modules[type(foo.get_operator(RUN)).__module__.rsplit(".", 1)[0] + ".forms"]
    reported = []

    class Ctx:
        def set_progress(self, progress, label):
            reported.append((progress, label))

    with fou.ProgressBar(total=6, progress=forms.progress_reporter(Ctx(), "DiffuPrompter")) as pb:
        for _ in range(6):
            pb.update()
    assert reported[-1] == (1.0, "DiffuPrompter: 6/6 samples")
