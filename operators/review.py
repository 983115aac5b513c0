"""Operators of the review loop: review pseudo-labels (sets the App's view),
accept confident pseudo-labels, and review status."""

from __future__ import annotations

from typing import Any

import fiftyone as fo
import fiftyone.operators.types as types

from . import forms

ALL = "all classes"
ORDER_LABELS = {
    "worst_first": "Worst first (lowest quality)",
    "calibration": "Calibration sample (random within quality bins)",
}
STATUS_COLUMNS = {
    "class": "Class",
    "labels": "Labels",
    "unreviewed": "Unreviewed",
    "accepted": "Accepted",
    "rejected": "Rejected",
    "auto_accepted": "Auto-accepted",
    "auto_rejected": "Auto-rejected",
    "conflicting": "Both tags",
    "edited": "Edited or added by a person",
    "precision": "Precision (reviewed)",
}
CALIBRATION_COLUMNS = {
    "class": "Class",
    "labels": "Labels",
    "judged": "Judged",
    "threshold": "Threshold",
    "precision": "Precision",
    "lower_bound": "Lower bound",
    "would_accept": "Would accept",
    "more_reviews": "Reviews to decide",
}


def field_and_class(ctx: Any, inputs: types.Object) -> tuple[str, list[str]] | None:
    """Adds the pseudo-label field and class choices; returns (field, classes)
    or None when the dataset has no Detections field (the form is then invalid)."""
    fields = forms.detections_fields(ctx, inputs, "Pseudo-labels")
    if not fields:
        return None
    field = ctx.params.get("pred_field") if ctx.params.get("pred_field") in fields else fields[0]
    classes = sorted(ctx.dataset.distinct(f"{field}.detections.label"))
    return field, classes


class ReviewPseudoLabels(forms.FormOperator):
    operator_name = "review_pseudo_labels"
    operator_label = "DiffuPrompter: review pseudo-labels"
    operator_description = (
        "Shows the labels that still need a person, worst first or as a calibration "
        "sample; tag them accepted or rejected"
    )
    delegable = False

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = forms.target_inputs(ctx)
        chosen = field_and_class(ctx, inputs)
        if chosen is None:
            return forms.form(inputs, "Review pseudo-labels")
        _, classes = chosen
        inputs.enum("label", [ALL, *classes], label="Class", default=ALL)
        order = types.RadioGroup()
        for value, label in ORDER_LABELS.items():
            order.add_choice(value, label=label)
        inputs.enum("order", list(ORDER_LABELS), label="Order", default="worst_first", view=order)
        inputs.bool("patches", label="One patch per label", default=False)
        if ctx.params.get("order") == "calibration":
            inputs.int("size", label="Labels per class", default=60, min=1)
            inputs.int("bins", label="Quality bins", default=5, min=1)
            inputs.int("seed", label="Random seed", default=0)
        inputs.view(
            "how",
            types.Notice(
                label="Then select labels in the App and tag them 'accepted' or 'rejected' "
                "(the tag button)."
            ),
        )
        return forms.form(inputs, "Review pseudo-labels")

    def execute(self, ctx: Any) -> dict[str, Any]:
        from diffuprompter_plugin.review import review_view
        from diffuprompter_plugin.verdicts import labels_path

        params = ctx.params
        label = params.get("label") or ALL
        order = params.get("order") or "worst_first"
        view = review_view(
            ctx.target_view(),
            params["pred_field"],
            order=order,
            classes=None if label == ALL else [label],
            patches=bool(params.get("patches")),
            bins=int(params.get("bins") or 5),
            size=int(params.get("size") or 60),
            seed=params.get("seed"),
        )
        left = view.count(labels_path(view, params["pred_field"]))
        if not ctx.delegated:
            ctx.ops.set_view(view=view)
        return {"left": left, "samples": len(view), "order": ORDER_LABELS[order]}

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        outputs.int("left", label="Labels left to review")
        outputs.int("samples", label="Samples in the view")
        outputs.str("order", label="Order")
        return forms.form(outputs, "Review")

    def __call__(
        self,
        sample_collection: Any,
        pred_field: str,
        order: str = "worst_first",
        label: str | None = None,
        patches: bool = False,
        size: int | None = None,
        seed: int | None = None,
    ) -> Any:
        """Runs the operator from Python (the SDK call is ``review_view``)."""
        params = dict(pred_field=pred_field, order=order, label=label, patches=patches)
        params.update(size=size, seed=seed)
        return forms.execute_from_sdk(self, sample_collection, params, False)


class AcceptPseudoLabels(forms.FormOperator):
    operator_name = "accept_pseudo_labels"
    operator_label = "DiffuPrompter: accept confident pseudo-labels"
    operator_description = (
        "Tags unreviewed labels above a quality threshold accepted (a fixed one, or per "
        "class from calibration); a person's tags are never changed"
    )
    delegable = False

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = forms.target_inputs(ctx)
        if not forms.detections_fields(ctx, inputs, "Pseudo-labels"):
            return forms.form(inputs, "Accept pseudo-labels")
        mode = types.RadioGroup()
        mode.add_choice("threshold", label="One quality threshold")
        mode.add_choice("calibrated", label="Calibrated per class (target precision)")
        inputs.enum("mode", ["threshold", "calibrated"], default="threshold", view=mode)
        if ctx.params.get("mode") == "calibrated":
            inputs.float("target_precision", label="Target precision", default=0.95,
                         min=0.5, max=0.999)  # fmt: skip
            inputs.float("confidence", label="Confidence", default=0.95, min=0.5, max=0.999)
            fields = sorted(ctx.dataset.get_field_schema(embedded_doc_type=fo.Detections))
            fields = [f for f in fields if f != ctx.params.get("pred_field")]  # not its own truth
            inputs.enum(
                "gt_field",
                ["(reviews)", *fields],
                label="Evidence",
                description="A person's verdicts, or a ground-truth field (IoU >= 0.5)",
                default="(reviews)",
            )
        else:
            inputs.float("min_quality", label="Accept at or above", default=0.8, min=0, max=1)
        inputs.float(
            "reject_below", label="Reject below (optional)", min=0, max=1,
            description="Unreviewed labels below this quality are tagged rejected",
        )  # fmt: skip
        return forms.form(inputs, "Accept pseudo-labels")

    def execute(self, ctx: Any) -> dict[str, Any]:
        from diffuprompter_plugin.calibration import calibrate_acceptance
        from diffuprompter_plugin.review import accept_pseudo_labels

        params = ctx.params
        target = ctx.target_view()
        calibration = None
        if params.get("mode") == "calibrated":
            ctx.set_progress(progress=0.0, label="Calibrating")
            gt_field = params.get("gt_field")
            calibration = calibrate_acceptance(  # every verdict counts, not the view's
                ctx.dataset,
                params["pred_field"],
                target_precision=params.get("target_precision", 0.95),
                confidence=params.get("confidence", 0.95),
                gt_field=None if gt_field in (None, "(reviews)") else gt_field,
            )
        out = accept_pseudo_labels(
            target,
            params["pred_field"],
            min_quality=None if calibration else params.get("min_quality"),
            reject_below=params.get("reject_below"),
            thresholds=calibration,
        )
        out["calibration"] = calibration.table() if calibration else []
        forms.reload_app(ctx)
        return out

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        outputs.int("accepted", label="Accepted now")
        outputs.int("rejected", label="Rejected now")
        outputs.int("unreviewed", label="Left unreviewed")
        outputs.list(
            "calibration",
            types.Object(),
            label="Calibration",
            view=forms.table(CALIBRATION_COLUMNS),
        )
        return forms.form(outputs, "Accepted")

    def __call__(
        self,
        sample_collection: Any,
        pred_field: str,
        min_quality: float | None = None,
        reject_below: float | None = None,
        target_precision: float | None = None,
        confidence: float | None = None,
        gt_field: str | None = None,
    ) -> Any:
        """Runs the operator from Python; ``target_precision`` calibrates per class."""
        mode = "calibrated" if target_precision is not None else "threshold"
        params = dict(pred_field=pred_field, mode=mode, min_quality=min_quality)
        params.update(reject_below=reject_below, target_precision=target_precision)
        params.update(confidence=confidence, gt_field=gt_field)
        return forms.execute_from_sdk(self, sample_collection, params, False)


class ReviewStatus(forms.FormOperator):
    operator_name = "review_status"
    operator_label = "DiffuPrompter: review status"
    operator_description = (
        "Per class: accepted, rejected and unreviewed labels, and the precision "
        "observed among reviewed ones"
    )
    delegable = False

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        forms.detections_fields(ctx, inputs, "Pseudo-labels")
        return forms.form(inputs, "Review status")

    def execute(self, ctx: Any) -> dict[str, Any]:
        """The whole dataset's status: the App's view is often a review view,
        which hides the labels already reviewed."""
        from diffuprompter_plugin.review import review_status

        return review_status(ctx.dataset, ctx.params["pred_field"])

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        outputs.int("unreviewed", label="Unreviewed labels")
        outputs.list("rows", types.Object(), label="Per class", view=forms.table(STATUS_COLUMNS))
        return forms.form(outputs, "Review status")

    def __call__(self, sample_collection: Any, pred_field: str) -> Any:
        """Runs the operator from Python (the SDK call is ``review_status``)."""
        return forms.execute_from_sdk(self, sample_collection, {"pred_field": pred_field}, False)
