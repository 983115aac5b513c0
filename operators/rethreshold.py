"""Operator: rebuild instances from stored heatmaps with new thresholds."""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from diffuprompter_plugin.brain import METHOD

from . import forms


class RethresholdPseudoLabels(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return forms.operator_config(
            "rethreshold_pseudo_labels",
            "DiffuPrompter: re-threshold pseudo-labels",
            "New instances from stored heatmaps; no diffusion rerun",
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        inputs.view_target(ctx)
        params = ctx.params
        runs = ctx.dataset.list_brain_runs(method=METHOD)
        if not runs:
            prop = inputs.view("no_runs", types.Warning(label="Run DiffuPrompter first"))
            prop.invalid = True
            return types.Property(inputs, view=types.View(label="Re-threshold"))
        inputs.enum("brain_key", runs, label="DiffuPrompter run", default=runs[0], required=True)
        brain_key = params.get("brain_key") or runs[0]
        config = ctx.dataset.get_brain_info(brain_key).config
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
        chosen = params.get("mode", "single")
        if chosen == "single":
            inputs.float(
                "threshold",
                label="Threshold γ",
                default=config.settings["threshold"],
                min=0.01,
                max=0.99,
            )
        elif chosen == "per_class":
            for i, name in enumerate(config.heatmap_fields):
                inputs.float(
                    f"class_{i}",
                    label=f"γ for {name}",
                    default=config.settings["threshold"],
                    min=0.01,
                    max=0.99,
                )
        else:
            inputs.str("thresholds_path", label="Thresholds JSON path", required=True)
        forms.model_inputs(inputs, run=config)
        return types.Property(inputs, view=types.View(label="Re-threshold pseudo-labels"))

    def execute(self, ctx: Any) -> dict[str, Any]:
        from diffuprompter_plugin.brain import rethreshold_pseudo_labels

        params = ctx.params
        brain_key = params["brain_key"]
        summary = rethreshold_pseudo_labels(
            ctx.target_view(),
            brain_key,
            params.get("out_field", "dp_rethresholded"),
            thresholds=self._thresholds(ctx, brain_key),
            sam_model=params.get("sam_model") or None,
            sam_checkpoint=params.get("sam_checkpoint") or None,
            device=forms.device_param(params),
            progress=forms.progress_reporter(ctx, "Re-threshold"),
        )
        forms.reload_app(ctx)
        return summary

    @staticmethod
    def _thresholds(ctx: Any, brain_key: str) -> Any:
        params = ctx.params
        mode = params.get("mode", "single")
        if mode == "file":
            return params["thresholds_path"]
        if mode == "per_class":
            classes = ctx.dataset.get_brain_info(brain_key).config.heatmap_fields
            return {name: params.get(f"class_{i}") for i, name in enumerate(classes)}
        return params.get("threshold")

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        outputs.int("samples", label="Samples")
        outputs.int("instances", label="Instances")
        outputs.obj("per_class", label="Instances per class", view=types.JSONView())
        return types.Property(outputs, view=types.View(label="Re-threshold finished"))

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
        params = dict(
            brain_key=brain_key,
            out_field=out_field,
            sam_model=sam_model,
            sam_checkpoint=sam_checkpoint,
            device=device,
        )
        if isinstance(thresholds, dict):
            config = sample_collection.get_brain_info(brain_key).config
            params["mode"] = "per_class"
            for i, name in enumerate(config.heatmap_fields):
                params[f"class_{i}"] = thresholds.get(name)
        elif isinstance(thresholds, str):
            params.update(mode="file", thresholds_path=thresholds)
        else:
            params.update(mode="single", threshold=thresholds)
        return forms.execute_from_sdk(self, sample_collection, params, delegate)
