"""Operator: run DiffuPrompter on a view (delegated by default)."""

from __future__ import annotations

from typing import Any

import fiftyone as fo
import fiftyone.operators.types as types

from diffuprompter_plugin.brain import DEFAULT_HEATMAP_FIELD, DEFAULT_PRED_FIELD, METHOD
from diffuprompter_plugin.run_args import RunArgs, takes_run_args

from . import forms

CLASS_LABEL_TYPES = (fo.Classification, fo.Classifications)


class RunDiffuPrompter(forms.FormOperator):
    operator_name = "run_diffuprompter"
    operator_label = "DiffuPrompter: generate pseudo-labels"
    operator_description = "Heatmaps and instance masks from Stable Diffusion + SAM"

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = forms.target_inputs(ctx)
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
        return forms.form(inputs, "DiffuPrompter")

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
        summary = start_pseudo_labels(
            ctx.target_view(),
            params["brain_key"],
            workers=params.get("workers") or 1,
            config=forms.method_settings(params),
            progress=forms.progress_reporter(ctx, "DiffuPrompter"),
            **_form_run_args(params).to_dict(),
        )
        forms.reload_app(ctx)
        return summary

    def resolve_output(self, ctx: Any) -> types.Property:
        return forms.run_outputs()

    @takes_run_args
    def __call__(
        self,
        sample_collection: Any,
        brain_key: str,
        run_args: RunArgs,
        delegate: bool = False,
        workers: int = 1,
        **settings: Any,
    ) -> Any:
        """Runs the operator from Python; the run's arguments are those of
        ``compute_pseudo_labels`` (classes, class_field, pred_field,
        heatmap_field, sd_model, sam_model, sam_checkpoint, device), and
        ``settings`` are method settings (timestep, loops, loop_batch_size,
        threshold, resolution, crf, crf_workers, tile_size, tile_overlap).
        With ``workers`` > 1 the operation queues that many worker
        operations to share the run (see ``queue_pseudo_labels``). To finish
        an interrupted run, use the ``resume_pseudo_labels`` operator."""
        params = {
            "brain_key": brain_key,
            "class_source": "field" if run_args.class_field else "list",
            **run_args.to_dict(),
            "workers": workers,
            **settings,
        }
        return forms.execute_from_sdk(self, sample_collection, params, delegate)


def _form_run_args(params: dict[str, Any]) -> RunArgs:
    """The run's arguments as the form gives them: the classes of the chosen
    source, and models and fields (empty ones keep their defaults)."""
    by_field = params.get("class_source", "field" if params.get("class_field") else "list")
    return RunArgs(
        classes=params.get("classes") if by_field == "list" else None,
        class_field=params.get("class_field") if by_field == "field" else None,
        pred_field=params.get("pred_field", DEFAULT_PRED_FIELD),
        heatmap_field=params.get("heatmap_field", DEFAULT_HEATMAP_FIELD),
        sd_model=params.get("sd_model"),
        sam_model=params.get("sam_model"),
        sam_checkpoint=params.get("sam_checkpoint") or None,
        device=forms.device_param(params),
    )
