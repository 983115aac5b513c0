"""Operator: run DiffuPrompter on a view, or resume a run (delegated by default)."""

from __future__ import annotations

from typing import Any

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from diffuprompter_plugin.brain import METHOD
from diffuprompter_plugin.engine.config import (
    DEFAULT_HEATMAP_FIELD,
    DEFAULT_PRED_FIELD,
    RUNTIME_SETTINGS,
)

from . import forms

CLASS_LABEL_TYPES = (fo.Classification, fo.Classifications)


class RunDiffuPrompter(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return forms.operator_config(
            "run_diffuprompter",
            "DiffuPrompter: generate pseudo-labels",
            "Heatmaps and instance masks from Stable Diffusion + SAM",
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        inputs.view_target(ctx)
        runs = ctx.dataset.list_brain_runs(method=METHOD)
        if runs:
            inputs.bool(
                "resume",
                label="Resume an existing run",
                description="Finish an interrupted run with its own classes, models and settings",
                default=False,
            )
        if runs and ctx.params.get("resume"):
            valid = self._resume_inputs(inputs, ctx, runs)
        else:
            valid = self._new_run_inputs(inputs, ctx)
        if valid and not ctx.requesting_delegated_execution:
            inputs.view(
                "immediate_notice",
                types.Notice(
                    label="Run immediately only for a few images: immediate runs stop after "
                    "FIFTYONE_OPERATOR_TIMEOUT (600 s by default). Schedule it for a GPU worker."
                ),
            )
        return types.Property(inputs, view=types.View(label="DiffuPrompter"))

    @staticmethod
    def _new_run_inputs(inputs: types.Object, ctx: Any) -> bool:
        """Classes, names of the run and its fields, models and settings."""
        params, dataset = ctx.params, ctx.dataset
        class_fields = sorted(dataset.get_field_schema(embedded_doc_type=CLASS_LABEL_TYPES))
        default_source = "field" if class_fields else "list"
        source = types.RadioGroup()
        source.add_choice("field", label="From a Classification field")
        source.add_choice("list", label="Fixed list of class names")
        inputs.enum(
            "class_source", source.values(), label="Classes", default=default_source, view=source
        )
        if params.get("class_source", default_source) == "field":
            if not class_fields:
                notice = inputs.view(
                    "no_class_field", types.Warning(label="No Classification field")
                )
                notice.invalid = True
                return False
            inputs.enum(
                "class_field",
                class_fields,
                label="Class field",
                default=class_fields[0],
                required=True,
            )
        else:
            inputs.list(
                "classes",
                types.String(),
                label="Class names",
                description="e.g. storage tank, ship",
                required=True,
                min_items=1,
            )
        forms.identifier_input(
            inputs,
            "brain_key",
            "Brain key",
            params.get("brain_key"),
            "diffuprompter",
            taken=set(dataset.list_brain_runs()),
            taken_reason="is taken: tick 'Resume' or choose another key",
        )
        fields = set(dataset.get_field_schema(flat=True))
        for name, label, default in (
            ("pred_field", "Instance field", DEFAULT_PRED_FIELD),
            ("heatmap_field", "Heatmap field prefix", DEFAULT_HEATMAP_FIELD),
        ):
            forms.identifier_input(inputs, name, label, params.get(name), default, taken=fields)
        forms.model_inputs(inputs)
        forms.method_inputs(inputs)
        return True

    @staticmethod
    def _resume_inputs(inputs: types.Object, ctx: Any, runs: list[str]) -> bool:
        """The run to resume, what it was made with, and the speed settings."""
        inputs.enum("brain_key", runs, label="Run to resume", default=runs[0], required=True)
        brain_key = ctx.params.get("brain_key")
        brain_key = brain_key if brain_key in runs else runs[0]
        config = ctx.dataset.get_brain_info(brain_key).config
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
        forms.method_inputs(inputs, runtime_only=True)
        forms.device_input(inputs)
        return True

    def execute(self, ctx: Any) -> dict[str, Any]:
        from diffuprompter_plugin.brain import compute_pseudo_labels, resume_pseudo_labels

        params = ctx.params
        progress = forms.progress_reporter(ctx, "DiffuPrompter")
        if params.get("resume"):
            results = resume_pseudo_labels(
                ctx.target_view(),
                params["brain_key"],
                device=forms.device_param(params),
                progress=progress,
                **forms.method_settings(params, runtime_only=True),
            )
        else:
            by_field = params.get("class_source", "field" if params.get("class_field") else "list")
            results = compute_pseudo_labels(
                ctx.target_view(),
                params["brain_key"],
                classes=params.get("classes") if by_field == "list" else None,
                class_field=params.get("class_field") if by_field == "field" else None,
                pred_field=params.get("pred_field", DEFAULT_PRED_FIELD),
                heatmap_field=params.get("heatmap_field", DEFAULT_HEATMAP_FIELD),
                sd_model=params.get("sd_model"),
                sam_model=params.get("sam_model"),
                sam_checkpoint=params.get("sam_checkpoint") or None,
                device=forms.device_param(params),
                config=forms.method_settings(params),
                progress=progress,
            )
        forms.reload_app(ctx)
        return results.summary()

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        outputs.str("brain_key", label="Brain key")
        outputs.int("processed", label="Samples labelled")
        outputs.int("instances", label="Instances")
        outputs.int("failed", label="Samples failed")
        outputs.obj("per_class", label="Instances per class", view=types.JSONView())
        outputs.obj("failures", label="Failures (sample id: error)", view=types.JSONView())
        return types.Property(outputs, view=types.View(label="DiffuPrompter finished"))

    def __call__(
        self,
        sample_collection: Any,
        brain_key: str,
        classes: list[str] | None = None,
        class_field: str | None = None,
        pred_field: str | None = None,
        heatmap_field: str | None = None,
        sd_model: str | None = None,
        sam_model: str | None = None,
        sam_checkpoint: str | None = None,
        device: str | None = None,
        resume: bool = False,
        delegate: bool = False,
        **settings: Any,
    ) -> Any:
        """Runs the operator from Python; ``settings`` are method settings
        (timestep, loops, loop_batch_size, threshold, resolution, crf,
        crf_workers). With ``resume``, the run keeps its classes, fields,
        models and settings: give only ``device`` and the speed settings
        (loop_batch_size, crf_workers)."""
        run = dict(
            classes=classes,
            class_field=class_field,
            pred_field=pred_field,
            heatmap_field=heatmap_field,
            sd_model=sd_model,
            sam_model=sam_model,
            sam_checkpoint=sam_checkpoint,
        )
        if resume:
            fixed = [name for name, value in run.items() if value is not None]
            fixed += [name for name in settings if name not in RUNTIME_SETTINGS]
            if fixed:
                raise ValueError(
                    f"A resumed run keeps its classes, fields, models and settings: drop {fixed}"
                )
            params = dict(brain_key=brain_key, resume=True, device=device, **settings)
        else:
            run["pred_field"] = pred_field or DEFAULT_PRED_FIELD
            run["heatmap_field"] = heatmap_field or DEFAULT_HEATMAP_FIELD
            source = "field" if class_field else "list"
            params = dict(
                brain_key=brain_key, class_source=source, device=device, **run, **settings
            )
        return forms.execute_from_sdk(self, sample_collection, params, delegate)
