"""Operator: one worker's share of a run queued over several workers.

``queue_pseudo_labels`` (or the run form's "Workers" option) queues one of
these per worker; each ``fiftyone delegated launch`` process that picks one
up claims and labels samples until the run has none left.
"""

from __future__ import annotations

from typing import Any

import fiftyone.operators.types as types

from . import forms


class LabelQueuedSamples(forms.FormOperator):
    operator_name = "label_queued_samples"
    operator_label = "DiffuPrompter: worker of a shared run"
    operator_description = "Claims and labels samples of a run queued over several workers"
    unlisted = True

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        inputs.str("brain_key", label="Brain key", required=True)
        inputs.str("part", label="Worker", description="This operation's number, e.g. 2/4")
        inputs.str("run_id", label="Run id", description="The run this operation was queued for")
        inputs.int("batch_size", label="Samples per claim", default=4, min=1)
        inputs.float("lease_s", label="Claim lease (s)", min=1)
        forms.device_input(inputs)
        return types.Property(inputs)

    def resolve_run_name(self, ctx: Any) -> str:
        return f"DiffuPrompter {ctx.params.get('brain_key')} worker {ctx.params.get('part')}"

    def execute(self, ctx: Any) -> dict[str, Any]:
        from diffuprompter_plugin.labelling import label_queued_samples

        params = ctx.params
        operation = ctx.request_params.get("run_doc")  # set by the delegated-operation service
        results = label_queued_samples(
            ctx.target_view(),
            params["brain_key"],
            device=forms.device_param(params),
            batch_size=params.get("batch_size", 4),
            lease_s=params["lease_s"],
            operation=str(operation) if operation is not None else None,
            progress=forms.progress_reporter(ctx, f"Worker {params.get('part')}"),
            run_id=params.get("run_id"),
        )
        return results.summary()

    def resolve_output(self, ctx: Any) -> types.Property:
        return forms.run_outputs()
