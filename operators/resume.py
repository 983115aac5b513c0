"""Operator: finish an interrupted DiffuPrompter run (delegated by default)."""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import forms


class ResumePseudoLabels(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return forms.operator_config(
            "resume_pseudo_labels",
            "DiffuPrompter: resume a run",
            "Finish an interrupted run with its own classes, models and settings",
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        inputs.view_target(ctx)
        chosen = forms.run_choice(inputs, ctx, "Run to resume")
        if chosen is None:
            return types.Property(inputs, view=types.View(label="Resume"))
        brain_key, config = chosen
        if forms.run_summary(inputs, config, brain_key):
            forms.method_inputs(inputs, runtime_only=True)
            forms.device_input(inputs)
            forms.immediate_notice(inputs, ctx)
        return types.Property(inputs, view=types.View(label="Resume a DiffuPrompter run"))

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
