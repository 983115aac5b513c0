"""Operator: evaluate pseudo-labels against ground truth (mask AP)."""

from __future__ import annotations

import json
from typing import Any

import fiftyone.operators.types as types

from diffuprompter_plugin.ranking import SIGNALS

from . import forms

METRICS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AP (FiftyOne)")


class EvaluatePseudoLabels(forms.FormOperator):
    operator_name = "evaluate_pseudo_labels"
    operator_label = "DiffuPrompter: evaluate pseudo-labels"
    operator_description = "Mask AP, AP50, AP75, AP_S/M/L per class (FiftyOne + pycocotools)"
    default_delegated = False

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = forms.target_inputs(ctx)
        fields = forms.detections_fields(ctx, inputs, "Pseudo-labels")
        if not fields:
            return forms.form(inputs, "Evaluate")
        inputs.enum("gt_field", fields, label="Ground truth", required=True, default=fields[-1])
        forms.identifier_input(
            inputs,
            "eval_key",
            "Evaluation key",
            ctx.params.get("eval_key"),
            "dp_eval",
            taken=set(ctx.dataset.list_evaluations()),
        )
        inputs.str(
            "class_map",
            label="Class map (JSON, optional)",
            description='{"ground-truth name": "pseudo-label name"}; defaults map '
            "plane, small/large vehicle and playground",
        )
        inputs.int(
            "max_dets",
            label="Detections per image (optional)",
            description="Kept per image and class; default: the dataset's convention "
            "(iSAID 1000, COCO 100)",
            min=1,
        )
        inputs.enum(
            "score_field",
            list(SIGNALS),
            label="Rank by",
            default="confidence",
            description="The detection attribute that orders predictions for AP",
        )
        return forms.form(inputs, "Evaluate pseudo-labels")

    def execute(self, ctx: Any) -> dict[str, Any]:
        from diffuprompter_plugin.evaluation import evaluate_pseudo_labels

        params = ctx.params
        text = params.get("class_map") or ""
        try:
            class_map = json.loads(text) if text.strip() else None
        except json.JSONDecodeError as e:
            raise ValueError(f"class_map is not valid JSON: {e}") from e
        report = evaluate_pseudo_labels(
            ctx.target_view(),
            params["pred_field"],
            params["gt_field"],
            params.get("eval_key", "dp_eval"),
            class_map=class_map,
            max_dets=params.get("max_dets"),
            pr_curves_path=True,
            score_field=params.get("score_field") or "confidence",
            progress=forms.progress_reporter(ctx, "Evaluate"),
        )
        forms.reload_app(ctx)
        return report

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        columns = {"class": "Class", **{metric: metric for metric in METRICS}}
        outputs.list("table", types.Object(), label="Mask AP", view=forms.table(columns))
        outputs.list(
            "pr_curves",
            types.Object(),
            label="PR curves (IoU 0.5)",
            view=types.PlotlyView(
                layout={"xaxis": {"title": "recall"}, "yaxis": {"title": "precision"}}
            ),
        )
        outputs.str("pr_curves_file", label="PR curves saved to")
        outputs.int("max_dets", label="Detections kept per image and class")
        outputs.list("unmatched_gt_classes", types.String(), label="GT classes not labelled")
        outputs.bool("agree", label="FiftyOne and pycocotools agree on AP/AP50/AP75")
        return forms.form(outputs, "Evaluation")

    def __call__(
        self,
        sample_collection: Any,
        pred_field: str,
        gt_field: str,
        eval_key: str,
        class_map: dict[str, str] | None = None,
        max_dets: int | None = None,
        score_field: str = "confidence",
        delegate: bool = False,
    ) -> Any:
        """Runs the evaluation from Python."""
        params = dict(
            pred_field=pred_field,
            gt_field=gt_field,
            eval_key=eval_key,
            class_map=json.dumps(class_map) if class_map else None,
            max_dets=max_dets,
            score_field=score_field,
        )
        return forms.execute_from_sdk(self, sample_collection, params, delegate)
