"""The plugin's operators: loading, forms and validation, immediate and
delegated execution with a real ``fiftyone delegated launch`` worker."""

from __future__ import annotations

import os
import subprocess
import sys

import fiftyone.operators as foo
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionError, ExecutionRunState
from helpers import launch_workers, stop_workers, wait_terminal

PLUGIN = "@diffuprompter/diffuprompter"
RUN = f"{PLUGIN}/run_diffuprompter"
RESUME = f"{PLUGIN}/resume_pseudo_labels"
WORKER = f"{PLUGIN}/label_queued_samples"
RETHRESHOLD = f"{PLUGIN}/rethreshold_pseudo_labels"
IMPORTS = [
    f"{PLUGIN}/import_{n}"
    for n in ("classification_collection", "isaid", "nwpu_vhr10", "geotiffs", "stac")
]
EVALUATE = f"{PLUGIN}/evaluate_pseudo_labels"
EXPORT_GEO = f"{PLUGIN}/export_geo"
REVIEWS = [
    f"{PLUGIN}/{n}"
    for n in (
        "review_pseudo_labels",
        "accept_pseudo_labels",
        "review_status",
        "export_training_set",
    )
]


def _tiny_settings(tiny_models):
    sd, sam = tiny_models
    return dict(
        sd_model=sd,
        sam_model=sam,
        device="cpu",
        loops=2,
        loop_batch_size=2,
        resolution=64,
        crf=False,
        threshold=0.3,
    )


def test_plugin_registers_operators_without_heavy_imports():
    code = (
        "import sys, fiftyone.operators as foo\n"
        "from fiftyone.operators.registry import OperatorRegistry\n"
        "print(OperatorRegistry().list_errors())\n"
        f"print(sorted(o.uri for o in foo.list_operators() if o.uri.startswith('{PLUGIN}')))\n"
        "print([m for m in ('torch', 'diffusers', 'segment_anything') if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ.copy(),
    ).stdout.splitlines()
    assert out == [
        "[]",
        str(sorted([RESUME, RETHRESHOLD, RUN, WORKER, *IMPORTS, EVALUATE, EXPORT_GEO, *REVIEWS])),
        "[]",
    ]


def test_operator_configs_keep_their_names_and_delegation_defaults():
    delegated_first = {RUN, RESUME, WORKER, RETHRESHOLD}
    for uri in [RUN, RESUME, WORKER, RETHRESHOLD, *IMPORTS, EVALUATE, EXPORT_GEO]:
        config = foo.get_operator(uri).config
        assert f"{PLUGIN}/{config.name}" == uri
        assert config.label.startswith("DiffuPrompter: ")
        assert config.dynamic and config.allow_immediate_execution
        assert config.allow_delegated_execution
        assert config.default_choice_to_delegated == (uri in delegated_first), uri
        assert config.unlisted == (uri == WORKER), uri


def test_run_form_asks_for_method_settings_with_their_declared_ranges():
    from diffuprompter_plugin.engine.config import RUNTIME_SETTINGS, SETTINGS
    from operators import forms

    assert set(forms.FORM_SETTINGS) <= set(SETTINGS)
    assert "threshold" in forms.FORM_SETTINGS and "template" not in forms.FORM_SETTINGS
    params = {"threshold": 0.3, "crf_workers": 2, "template": "a {}", "seed": 3, "loops": None}
    assert forms.method_settings(params) == {"threshold": 0.3, "crf_workers": 2}
    assert forms.method_settings(params, runtime_only=True) == {"crf_workers": 2}
    runtime = [n for n in forms.FORM_SETTINGS if n in RUNTIME_SETTINGS]
    assert runtime == ["loop_batch_size", "crf_workers"]


def test_run_entry_points_share_the_run_arguments_in_their_places():
    import inspect

    from diffuprompter_plugin.labelling import compute_pseudo_labels, queue_pseudo_labels
    from operators.run_diffuprompter import RunDiffuPrompter

    run = ["classes", "class_field", "pred_field", "heatmap_field"]
    run += ["sd_model", "sam_model", "sam_checkpoint", "device"]
    signatures = {
        compute_pseudo_labels: ["samples", "brain_key", *run, "config", "model"]
        + ["output_dir", "batch_size", "smoke", "progress"],
        queue_pseudo_labels: ["samples", "brain_key", "workers", *run, "config"]
        + ["output_dir", "batch_size", "smoke", "lease_s"],
        RunDiffuPrompter().__call__: ["sample_collection", "brain_key", *run]
        + ["delegate", "workers", "settings"],
    }
    for function, names in signatures.items():
        parameters = inspect.signature(function).parameters
        assert list(parameters) == names, function
        assert parameters["pred_field"].default == "dp_instances"
        assert parameters["heatmap_field"].default == "dp_heatmap"
    assert inspect.signature(queue_pseudo_labels).parameters["batch_size"].default == 4
    assert inspect.signature(compute_pseudo_labels).parameters["batch_size"].default == 16


def test_run_arguments_bind_by_position_and_by_name(image_dataset):
    from helpers import StubModel

    from diffuprompter_plugin.labelling import compute_pseudo_labels

    # classes, class_field, pred_field, heatmap_field, 4 model args, config, model
    args = (["ship"], None, "mine", "heat", None, None, None, None, None, StubModel())
    results = compute_pseudo_labels(image_dataset, "dp", *args, batch_size=2)
    assert results.processed == 4
    assert image_dataset.count("mine") == image_dataset.count("heat_ship") == 4
    with pytest.raises(TypeError, match="multiple values for argument 'classes'"):
        compute_pseudo_labels(image_dataset, "dp2", ["ship"], classes=["ship"])
    with pytest.raises(TypeError, match="unexpected keyword argument 'workers'"):
        compute_pseudo_labels(image_dataset, "dp2", classes=["ship"], workers=2)


def test_immediate_run_and_rethreshold_from_sdk(image_dataset, tiny_models):
    result = foo.get_operator(RUN)(
        image_dataset, "dp", class_field="ground_truth", **_tiny_settings(tiny_models)
    )
    assert result.result["processed"] == 4 and result.result["failed"] == 0
    assert image_dataset.count("dp_instances") == 4
    assert image_dataset.count("dp_heatmap_ship") == 2
    config = image_dataset.get_brain_info("dp").config
    assert config.settings["loops"] == 2 and config.settings["resolution"] == 64

    out = foo.get_operator(RETHRESHOLD)(
        image_dataset,
        "dp",
        "dp_strict",
        thresholds={"ship": 0.5, "harbor": 0.6, "storage tank": 0.7},
        device="cpu",
    )
    assert out.result["samples"] == 4
    assert image_dataset.count("dp_strict") == 4


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"brain_key": "2fast"}, "brain_key"),
        ({"loops": 0}, "loops"),
        ({"threshold": 1.5}, "threshold"),
        ({"pred_field": "ground_truth"}, "pred_field"),
    ],
)
def test_invalid_form_values_are_rejected(image_dataset, tiny_models, changes, reason):
    kwargs = dict(brain_key="dp", class_field="ground_truth", **_tiny_settings(tiny_models))
    kwargs.update(changes)
    with pytest.raises(ExecutionError, match=reason):
        foo.get_operator(RUN)(image_dataset, **kwargs)
    assert image_dataset.list_brain_runs() == []


def test_taken_brain_key_needs_resume_which_reuses_the_run(image_dataset, tiny_models):
    settings = _tiny_settings(tiny_models)
    run, resume = foo.get_operator(RUN), foo.get_operator(RESUME)
    run(image_dataset, "dp", classes=["ship"], **settings)
    with pytest.raises(ExecutionError, match="is taken"):
        run(image_dataset, "dp", classes=["ship"], **settings)
    with pytest.raises(ExecutionError, match=r"not \['loops'\]"):
        resume(image_dataset, "dp", loops=3)
    with pytest.raises(ExecutionError, match="brain_key"):
        resume(image_dataset, "nope")

    image_dataset.limit(3).set_field("dp_instances", None).save()
    resumed = resume(image_dataset, "dp", device="cpu", loop_batch_size=1)
    assert resumed.result["processed"] == 4 and resumed.result["failed"] == 0
    assert image_dataset.get_brain_info("dp").config.settings["loops"] == 2


def test_forms_of_a_run_made_with_an_already_built_model(image_dataset, tiny_models):
    from helpers import StubModel

    from diffuprompter_plugin.labelling import compute_pseudo_labels

    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=StubModel())
    with pytest.raises(ExecutionError, match="prebuilt_run"):
        foo.get_operator(RESUME)(image_dataset, "dp")
    rethreshold = foo.get_operator(RETHRESHOLD)
    with pytest.raises(ExecutionError, match="sam_model"):
        rethreshold(image_dataset, "dp", "dp_strict", thresholds=0.5, device="cpu")
    assert not image_dataset.has_sample_field("dp_strict")
    out = rethreshold(
        image_dataset, "dp", "dp_strict", 0.5, sam_model=tiny_models[1], device="cpu"
    )
    assert out.result["samples"] == 4 and image_dataset.count("dp_strict") == 4


@pytest.mark.slow
def test_delegated_runs_with_a_real_worker(image_dataset, tiny_models, tmp_path):
    settings = _tiny_settings(tiny_models)
    good = foo.get_operator(RUN)(
        image_dataset, "dp", class_field="ground_truth", delegate=True, **settings
    )
    missing = {**settings, "sd_model": str(tmp_path / "nope")}
    bad = foo.get_operator(RUN)(
        image_dataset,
        "dp_bad",
        classes=["ship"],
        pred_field="bad",
        heatmap_field="bad_heatmap",
        delegate=True,
        **missing,
    )
    ids = [good.result["id"], bad.result["id"]]
    service = DelegatedOperationService()
    assert [service.get(i).run_state for i in ids] == [ExecutionRunState.QUEUED] * 2

    workers = launch_workers(1, tmp_path)
    try:
        done, failed = wait_terminal(ids, timeout=240)
    finally:
        stop_workers(workers)
    assert done.run_state == ExecutionRunState.COMPLETED, done.result.error
    assert done.result.result["processed"] == 4
    assert done.status.progress == 1.0
    image_dataset.reload()
    assert image_dataset.count("dp_instances") == 4
    assert failed.run_state == ExecutionRunState.FAILED
    assert "Cannot load the Stable Diffusion" in failed.result.error
    assert "nope" in failed.result.error
    assert "dp_bad" not in image_dataset.list_brain_runs()  # nothing half-written
    assert not image_dataset.has_sample_field("bad")


def test_import_operator_from_sdk(tmp_path):
    import fiftyone as fo
    import numpy as np
    from PIL import Image

    root = tmp_path / "PatternNet"
    (root / "images" / "tennis_court").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(
        root / "images" / "tennis_court" / "tennis_court001.jpg"
    )
    name = f"op-import-{os.urandom(3).hex()}"
    operator = foo.get_operator(IMPORTS[0])
    try:
        result = operator(root, dataset_name=name)
        assert result.result["added"] == 1
        assert fo.load_dataset(name).first().ground_truth.label == "tennis court"
        with pytest.raises(ExecutionError, match="missing_folder' does not exist"):
            operator(tmp_path / "missing_folder", dataset_name=f"{name}-2")
        assert not fo.dataset_exists(f"{name}-2")
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_run_form_with_workers_queues_the_run_for_them(image_dataset, tiny_models):
    from diffuprompter_plugin import pseudo_labels_status

    out = foo.get_operator(RUN)(
        image_dataset, "dp", class_field="ground_truth", workers=2, **_tiny_settings(tiny_models)
    )
    assert out.result["brain_key"] == "dp" and len(out.result["queued"]) == 2
    assert pseudo_labels_status(image_dataset, "dp")["pending"] == 4
    assert image_dataset.count("dp_instances") == 0  # left to the two workers
