"""Operator: run DiffuPrompter on a view (delegated by default)."""

from __future__ import annotations

from typing import Any

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from diffuprompter_plugin.config import DEFAULT_HEATMAP_FIELD, DEFAULT_PRED_FIELD

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
        params = ctx.params
        dataset = ctx.dataset

        class_fields = sorted(
            name
            for name, field in dataset.get_field_schema(
                embedded_doc_type=CLASS_LABEL_TYPES
            ).items()
        )
        source = types.RadioGroup()
        source.add_choice("field", label="From a Classification field")
        source.add_choice("list", label="Fixed list of class names")
        inputs.enum(
            "class_source",
            source.values(),
            label="Classes",
            default="field" if class_fields else "list",
            view=source,
        )
        if params.get("class_source", "field" if class_fields else "list") == "field":
            if not class_fields:
                notice = inputs.view(
                    "no_class_field", types.Warning(label="No Classification field")
                )
                notice.invalid = True
                return types.Property(inputs, view=types.View(label="DiffuPrompter"))
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

        runs = set(dataset.list_brain_runs())
        resume = bool(params.get("resume"))
        inputs.bool(
            "resume",
            label="Resume an existing run",
            description="Finish an interrupted run with the same key and settings",
            default=False,
        )
        forms.identifier_input(
            inputs,
            "brain_key",
            "Brain key",
            params.get("brain_key"),
            "diffuprompter",
            taken=set() if resume else runs,
            taken_reason="is taken: tick 'Resume' or choose another key",
        )
        if resume and params.get("brain_key") not in runs:
            prop = inputs.view("resume_missing", types.Warning(label="No run with this key"))
            prop.invalid = True
        fields = set() if resume else set(dataset.get_field_schema(flat=True))
        forms.identifier_input(
            inputs,
            "pred_field",
            "Instance field",
            params.get("pred_field"),
            DEFAULT_PRED_FIELD,
            taken=fields,
        )
        forms.identifier_input(
            inputs,
            "heatmap_field",
            "Heatmap field prefix",
            params.get("heatmap_field"),
            DEFAULT_HEATMAP_FIELD,
            taken=fields,
        )
        forms.model_inputs(inputs)
        forms.method_inputs(inputs)
        if not ctx.requesting_delegated_execution:
            inputs.view(
                "immediate_notice",
                types.Notice(
                    label="Run immediately only for a few images: immediate runs stop after "
                    "FIFTYONE_OPERATOR_TIMEOUT (600 s by default). Schedule it for a GPU worker."
                ),
            )
        return types.Property(inputs, view=types.View(label="DiffuPrompter"))

    def execute(self, ctx: Any) -> dict[str, Any]:
        from diffuprompter_plugin.brain import compute_pseudo_labels

        params = ctx.params
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
            progress=forms.progress_reporter(ctx, "DiffuPrompter"),
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
        pred_field: str = DEFAULT_PRED_FIELD,
        heatmap_field: str = DEFAULT_HEATMAP_FIELD,
        sd_model: str | None = None,
        sam_model: str | None = None,
        sam_checkpoint: str | None = None,
        device: str | None = None,
        resume: bool = False,
        delegate: bool = False,
        **settings: Any,
    ) -> Any:
        """Runs the operator from Python; ``settings`` are method settings
        (timestep, loops, loop_batch_size, threshold, resolution, crf)."""
        params = dict(
            brain_key=brain_key,
            class_source="field" if class_field else "list",
            classes=classes,
            class_field=class_field,
            pred_field=pred_field,
            heatmap_field=heatmap_field,
            sd_model=sd_model,
            sam_model=sam_model,
            sam_checkpoint=sam_checkpoint,
            device=device,
            resume=resume,
            **settings,
        )
        return forms.execute_from_sdk(self, sample_collection, params, delegate)
