"""Operator: rebuild instances from stored heatmaps with new thresholds."""

from __future__ import annotations

from typing import Any

import fiftyone.operators.types as types

from . import forms


class RethresholdPseudoLabels(forms.FormOperator):
    operator_name = "rethreshold_pseudo_labels"
    operator_label = "DiffuPrompter: re-threshold pseudo-labels"
    operator_description = "New instances from stored heatmaps; no diffusion rerun"

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = forms.target_inputs(ctx)
        params = ctx.params
        chosen = forms.run_choice(inputs, ctx, "DiffuPrompter run")
        if chosen is None:
            return forms.form(inputs, "Re-threshold")
        _, config = chosen
        fields = set(ctx.dataset.get_field_schema(flat=True))
        forms.identifier_input(
            inputs,
            "out_field",
            "Output field",
            params.get("out_field"),
            "dp_rethresholded",
            taken=fields,
        )
        mode = types.RadioGroup()
        mode.add_choice("single", label="One threshold for all classes")
        mode.add_choice("per_class", label="A threshold per class")
        mode.add_choice("file", label="Thresholds file (JSON from calibration)")
        inputs.enum("mode", mode.values(), label="Thresholds", default="single", view=mode)
        gamma = config.settings["threshold"]
        chosen = params.get("mode", "single")
        if chosen == "single":
            forms.setting_input(inputs, "thresholds", "threshold", default=gamma)
        elif chosen == "per_class":
            per_class = types.Object()
            for name in config.heatmap_fields:
                forms.setting_input(
                    per_class, name, "threshold", default=gamma, label=f"γ for {name}"
                )
            inputs.define_property("thresholds", per_class, label="Threshold γ per class")
        else:
            inputs.str("thresholds", label="Thresholds JSON path", required=True)
        forms.model_inputs(inputs, run=config)
        return forms.form(inputs, "Re-threshold pseudo-labels")

    def execute(self, ctx: Any) -> dict[str, Any]:
        from diffuprompter_plugin.rethreshold import rethreshold_pseudo_labels

        params = ctx.params
        summary = rethreshold_pseudo_labels(
            ctx.target_view(),
            params["brain_key"],
            params.get("out_field", "dp_rethresholded"),
            thresholds=params.get("thresholds"),
            sam_model=params.get("sam_model") or None,
            sam_checkpoint=params.get("sam_checkpoint") or None,
            device=forms.device_param(params),
            progress=forms.progress_reporter(ctx, "Re-threshold"),
        )
        forms.reload_app(ctx)
        return summary

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        outputs.int("samples", label="Samples")
        outputs.int("instances", label="Instances")
        outputs.obj("per_class", label="Instances per class", view=types.JSONView())
        outputs.obj("failures", label="Samples left without instances", view=types.JSONView())
        return forms.form(outputs, "Re-threshold finished")

    def __call__(
        self,
        sample_collection: Any,
        brain_key: str,
        out_field: str,
        thresholds: float | dict[str, float] | str | None = None,
        sam_model: str | None = None,
        sam_checkpoint: str | None = None,
        device: str | None = None,
        delegate: bool = False,
    ) -> Any:
        """Runs the operator from Python; ``thresholds`` is a number, a
        ``{class: gamma}`` dict or a JSON file path."""
        mode = {dict: "per_class", str: "file"}.get(type(thresholds), "single")
        params = dict(
            brain_key=brain_key,
            out_field=out_field,
            mode=mode,
            thresholds=thresholds,
            sam_model=sam_model,
            sam_checkpoint=sam_checkpoint,
            device=device,
        )
        return forms.execute_from_sdk(self, sample_collection, params, delegate)
