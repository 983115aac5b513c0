"""Operator: run DiffuPrompter on a view (delegated by default)."""

from __future__ import annotations

from typing import Any

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from diffuprompter_plugin.brain import METHOD
from diffuprompter_plugin.engine.config import DEFAULT_HEATMAP_FIELD, DEFAULT_PRED_FIELD

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
        if ctx.dataset.list_brain_runs(method=METHOD):
            inputs.view(
                "resume_hint",
                types.Notice(
                    label="To finish an interrupted run, use 'DiffuPrompter: resume a run'"
                ),
            )
        if self._new_run_inputs(inputs, ctx):
            forms.immediate_notice(inputs, ctx)
            if ctx.requesting_delegated_execution:
                inputs.int(
                    "workers",
                    label="Workers",
                    description="Delegated operations that share the run, one per GPU: "
                    "start a `fiftyone delegated launch` for each",
                    default=1,
                    min=1,
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
            taken_reason="is taken: resume it with 'DiffuPrompter: resume a run', or pick another",
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

    def execute(self, ctx: Any) -> dict[str, Any]:
        from diffuprompter_plugin.labelling import start_pseudo_labels

        params = ctx.params
        by_field = params.get("class_source", "field" if params.get("class_field") else "list")
        summary = start_pseudo_labels(
            ctx.target_view(),
            params["brain_key"],
            workers=params.get("workers") or 1,
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
        return summary

    def resolve_output(self, ctx: Any) -> types.Property:
        return forms.run_outputs()

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
        delegate: bool = False,
        workers: int = 1,
        **settings: Any,
    ) -> Any:
        """Runs the operator from Python; ``settings`` are method settings
        (timestep, loops, loop_batch_size, threshold, resolution, crf,
        crf_workers). With ``workers`` > 1 the operation queues that many
        worker operations to share the run (see ``queue_pseudo_labels``).
        To finish an interrupted run, use the ``resume_pseudo_labels``
        operator."""
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
            workers=workers,
            **settings,
        )
        return forms.execute_from_sdk(self, sample_collection, params, delegate)
