"""Operator: finish an interrupted DiffuPrompter run (delegated by default)."""

from __future__ import annotations

from typing import Any

import fiftyone.operators.types as types

from . import forms


class ResumePseudoLabels(forms.FormOperator):
    operator_name = "resume_pseudo_labels"
    operator_label = "DiffuPrompter: resume a run"
    operator_description = "Finish an interrupted run with its own classes, models and settings"

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = forms.target_inputs(ctx)
        chosen = forms.run_choice(inputs, ctx, "Run to resume")
        if chosen is None:
            return forms.form(inputs, "Resume")
        brain_key, config = chosen
        if forms.run_summary(inputs, config, brain_key):
            forms.method_inputs(inputs, runtime_only=True)
            forms.device_input(inputs)
            forms.immediate_notice(inputs, ctx)
        return forms.form(inputs, "Resume a DiffuPrompter run")

    def execute(self, ctx: Any) -> dict[str, Any]:
        from diffuprompter_plugin.labelling import resume_pseudo_labels

        params = ctx.params
        results = resume_pseudo_labels(
            ctx.target_view(),
            params["brain_key"],
            device=forms.device_param(params),
            progress=forms.progress_reporter(ctx, "DiffuPrompter"),
            **forms.method_settings(params),
        )
        forms.reload_app(ctx)
        return results.summary()

    def resolve_output(self, ctx: Any) -> types.Property:
        return forms.run_outputs()

    def __call__(
        self,
        sample_collection: Any,
        brain_key: str,
        device: str | None = None,
        delegate: bool = False,
        **runtime_settings: Any,
    ) -> Any:
        """Resumes the run from Python; ``runtime_settings`` are new values of
        the settings that never change results (loop_batch_size, crf_workers)."""
        params = dict(brain_key=brain_key, device=device, **runtime_settings)
        return forms.execute_from_sdk(self, sample_collection, params, delegate)
