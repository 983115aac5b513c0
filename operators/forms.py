"""Form pieces and execution helpers shared by the operators."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from diffuprompter_plugin.brain import METHOD, PseudoLabelsConfig
from diffuprompter_plugin.engine.config import (
    DEFAULT_SAM_MODEL,
    DEFAULT_SD_MODEL,
    DEFAULTS,
    RUNTIME_SETTINGS,
    SETTINGS,
)

FORM_SETTINGS = (
    "timestep",
    "loops",
    "loop_batch_size",
    "threshold",
    "resolution",
    "crf",
    "crf_workers",
    "tile_size",
    "tile_overlap",
)
"""The method settings the App's run form asks for (the resume form: those
of them in ``RUNTIME_SETTINGS``); their ranges and labels are the config's."""


class FormOperator(foo.Operator):
    """A form-driven operator that may run delegated: subclasses name it
    (``operator_name``, ``operator_label``, ``operator_description``) and
    choose whether the App offers delegation first (``default_delegated``)
    and whether it is listed (``unlisted`` hides it from the operator list).
    An operator that acts on the App at once (sets its view) is never
    delegated (``delegable = False``)."""

    operator_name = ""
    operator_label = ""
    operator_description = ""
    default_delegated = True
    delegable = True
    unlisted = False

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name=self.operator_name,
            label=self.operator_label,
            description=self.operator_description,
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=self.delegable,
            default_choice_to_delegated=self.delegable and self.default_delegated,
            unlisted=self.unlisted,
        )


def target_inputs(ctx: Any) -> types.Object:
    """A new form that starts with the choice of the view to work on."""
    inputs = types.Object()
    inputs.view_target(ctx)
    return inputs


def table(columns: dict[str, str]) -> types.TableView:
    """A table view of a list output: ``{key: column label}``, in order."""
    view = types.TableView()
    for key, label in columns.items():
        view.add_column(key, label=label)
    return view


def form(fields: types.Object, label: str) -> types.Property:
    """A form's inputs, or an operator's outputs, shown under ``label``."""
    return types.Property(fields, view=types.View(label=label))


def identifier_input(
    inputs: types.Object,
    name: str,
    label: str,
    value: Any,
    default: str,
    taken: set[str] = frozenset(),
    taken_reason: str = "already exists",
) -> bool:
    """Adds a required identifier field; marks it invalid (with the reason)
    when it is not a Python identifier or is in ``taken``. Returns validity."""
    prop = inputs.str(name, label=label, default=default, required=True)
    if value is None:
        return True
    error = None
    if not isinstance(value, str) or not value.isidentifier():
        error = f"'{value}' is not a valid name: use letters, digits and _"
    elif value in taken:
        error = f"'{value}' {taken_reason}"
    if error:
        prop.invalid = True
        prop.error_message = error
    return error is None


def _method_names(runtime_only: bool) -> tuple[str, ...]:
    """The settings the forms ask for; only ``RUNTIME_SETTINGS`` with ``runtime_only``."""
    return tuple(n for n in FORM_SETTINGS if n in RUNTIME_SETTINGS or not runtime_only)


def setting_input(
    inputs: types.Object,
    name: str,
    setting: str | None = None,
    default: Any = None,
    label: str | None = None,
) -> None:
    """Adds the input ``name`` for the method setting ``setting`` (default:
    ``name``), with the label, description, bounds and default that the
    config declares for it, unless ``default`` or ``label`` is given."""
    setting = setting or name
    spec = SETTINGS[setting]
    add = {bool: inputs.bool, int: inputs.int, float: inputs.float, str: inputs.str}[spec.kind]
    bounds = {"min": spec.low, "max": spec.high} if spec.kind in (int, float) else {}
    add(
        name,
        label=label or spec.label,
        description=spec.description + (f" ({spec.rule()})" if spec.rule() else ""),
        default=getattr(DEFAULTS, setting) if default is None else default,
        **{k: v for k, v in bounds.items() if v is not None},
    )


def method_inputs(inputs: types.Object, runtime_only: bool = False) -> None:
    """Adds the method settings the run form asks for (``FORM_SETTINGS``),
    as the config declares them; only the speed settings with ``runtime_only``."""
    for name in _method_names(runtime_only):
        setting_input(inputs, name)


def method_settings(params: dict[str, Any], runtime_only: bool = False) -> dict[str, Any]:
    """The method settings present in ``params`` (missing ones keep defaults)."""
    return {n: params[n] for n in _method_names(runtime_only) if params.get(n) is not None}


def model_inputs(inputs: types.Object, run: PseudoLabelsConfig | None = None) -> None:
    """Model locations: hub ids, registry types or local paths on the worker.
    With ``run`` (an existing run's config) only SAM is asked for; leaving it
    empty uses the run's, unless the run was made with an already-built model."""
    if run is None:
        inputs.str(
            "sd_model",
            label="Stable Diffusion",
            description="Hub id or a diffusers folder on the machine that runs the job",
            default=DEFAULT_SD_MODEL,
        )
    sam = "vit_h, vit_l, vit_b, or a folder with sam_config.json and sam.pth"
    if run is not None and run.sam_recorded:
        sam = f"{sam}; empty: the run's ({run.models['sam_model']})"
    elif run is not None:
        sam = f"{sam}; required: this run was made in Python with an already-built model"
    inputs.str(
        "sam_model",
        label="SAM",
        description=sam,
        default=None if run is not None else DEFAULT_SAM_MODEL,
        required=run is not None and not run.sam_recorded,
    )
    inputs.str(
        "sam_checkpoint",
        label="SAM checkpoint",
        description="Optional .pth path; empty downloads Meta's checkpoint",
    )
    device_input(inputs)


def run_choice(
    inputs: types.Object, ctx: Any, label: str
) -> tuple[str, PseudoLabelsConfig] | None:
    """Adds the choice of one of the dataset's DiffuPrompter runs; returns the
    chosen ``(brain_key, config)``, or None (with a warning, and the form
    invalid) when the dataset has no run."""
    runs = ctx.dataset.list_brain_runs(method=METHOD)
    if not runs:
        inputs.view("no_runs", types.Warning(label="Run DiffuPrompter first")).invalid = True
        return None
    inputs.enum("brain_key", runs, label=label, default=runs[0], required=True)
    brain_key = ctx.params.get("brain_key")
    brain_key = brain_key if brain_key in runs else runs[0]
    return brain_key, ctx.dataset.get_brain_info(brain_key).config


def run_summary(inputs: types.Object, config: PseudoLabelsConfig, brain_key: str) -> bool:
    """Shows what run ``brain_key`` was made with; returns False (with a
    warning, and the form invalid) when it can be resumed from Python only."""
    if not config.models_recorded:
        warning = types.Warning(
            label=f"'{brain_key}' was made in Python with an already-built model, "
            "whose weights are not on record: resume it there with "
            f"resume_pseudo_labels(dataset, '{brain_key}', model=...)"
        )
        inputs.view("prebuilt_run", warning).invalid = True
        return False
    classes = config.classes or f"from '{config.class_field}'"
    settings = config.settings
    inputs.view(
        "run_summary",
        types.Notice(
            label=f"Classes {classes}; {config.models['sd_model']} + "
            f"{config.models['sam_model']}; t={settings['timestep']}, "
            f"L={settings['loops']}, γ={settings['threshold']}. Samples without "
            f"'{config.pred_field}' are computed."
        ),
    )
    return True


def immediate_notice(inputs: types.Object, ctx: Any) -> None:
    """Warns that immediate runs are cut off, unless the run is scheduled."""
    if not ctx.requesting_delegated_execution:
        inputs.view(
            "immediate_notice",
            types.Notice(
                label="Run immediately only for a few images: immediate runs stop after "
                "FIFTYONE_OPERATOR_TIMEOUT (600 s by default). Schedule it for a GPU worker."
            ),
        )


def run_outputs() -> types.Property:
    """The summary of a finished labelling run (``PseudoLabelsResults.summary``)."""
    outputs = types.Object()
    outputs.str("brain_key", label="Brain key")
    outputs.int("processed", label="Samples labelled")
    outputs.int("instances", label="Instances")
    outputs.int("failed", label="Samples failed")
    outputs.obj("per_class", label="Instances per class", view=types.JSONView())
    outputs.obj("failures", label="Failures (sample id: error)", view=types.JSONView())
    outputs.list("queued", types.String(), label="Queued worker operations")
    return form(outputs, "DiffuPrompter finished")


def device_input(inputs: types.Object) -> None:
    """The device choice: automatic (CUDA when present), CUDA or CPU."""
    inputs.enum("device", ["auto", "cuda", "cpu"], label="Device", default="auto")


def device_param(params: dict[str, Any]) -> str | None:
    """The device parameter, None for automatic choice."""
    device = params.get("device") or "auto"
    return None if device == "auto" else device


def progress_reporter(ctx: Any, label: str, dt: float = 2.0) -> Callable[[Any], None]:
    """A FiftyOne ``ProgressBar`` callback that reports to ``ctx.set_progress``
    at most every ``dt`` seconds, and always when the bar reaches its total
    (FiftyOne's own ``report_progress`` can skip that last report)."""
    last = -math.inf

    def report(pb: Any) -> None:
        nonlocal last
        done = pb.total is not None and pb.iteration >= pb.total
        if done or time.monotonic() - last >= dt:
            last = time.monotonic()
            label_text = f"{label}: {pb.iteration}/{pb.total} samples"
            ctx.set_progress(progress=pb.progress, label=label_text)

    return report


def reload_app(ctx: Any) -> None:
    """Reloads the App's dataset after an immediate run."""
    if not ctx.delegated:
        ctx.trigger("reload_dataset")


def execute_from_sdk(
    operator: foo.Operator, samples: Any, params: dict[str, Any], delegate: bool
) -> Any:
    """Runs ``operator`` on a collection from Python, queued when ``delegate``.

    Raises:
        ValueError: ``delegate`` on a non-persistent dataset, which FiftyOne
            deletes when this process exits, before a worker could run the job.
    """
    if delegate:
        from diffuprompter_plugin.labelling import check_persistent

        check_persistent(samples)
    params = {k: v for k, v in params.items() if v is not None}
    return foo.execute_operator(
        operator.uri,
        ctx={"view": samples.view(), "params": params},
        request_delegation=delegate,
    )


def detections_fields(ctx: Any, inputs: types.Object, label: str) -> list[str]:
    """The dataset's ``fo.Detections`` fields, sorted, with the choice of one
    of them as ``pred_field`` (under ``label``) added to ``inputs``; when
    there are none, a warning that keeps the form from submitting."""
    fields = sorted(ctx.dataset.get_field_schema(embedded_doc_type=fo.Detections))
    if not fields:
        prop = inputs.view("no_fields", types.Warning(label="No Detections fields"))
        prop.invalid = True
        return fields
    inputs.enum("pred_field", fields, label=label, required=True, default=fields[0])
    return fields
