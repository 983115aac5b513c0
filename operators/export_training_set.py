"""Operator: export the reviewed labels as a COCO or YOLOv5 training set."""

from __future__ import annotations

from typing import Any

import fiftyone.operators.types as types

from . import forms

INCLUDE_LABELS = {
    "accepted": "Accepted labels",
    "accepted+unreviewed": "Accepted and unreviewed (not rejected)",
    "threshold": "Accepted, and unreviewed at or above a quality",
}
EVERY = "all"


def include_input(inputs: types.Object, ctx: Any, every: bool = False) -> None:
    """Adds the choice of labels to export (rejected ones never are, unless
    ``every`` offers all labels, each with its verdict)."""
    labels = {EVERY: "Every label, with its verdict"} if every else {}
    labels.update(INCLUDE_LABELS)
    choice = types.RadioGroup()
    for value, label in labels.items():
        choice.add_choice(value, label=label)
    default = next(iter(labels))
    inputs.enum("include", list(labels), label="Labels", default=default, view=choice)
    if ctx.params.get("include") == "threshold":
        inputs.float("min_quality", label="Quality at least", default=0.8, min=0, max=1)


def include_param(params: dict[str, Any], default: str = "accepted") -> str | float | None:
    """The ``include`` argument of the export functions from the form (None: every label)."""
    include = params.get("include") or default
    if include == "threshold":
        if params.get("min_quality") is None:
            raise ValueError("Quality at least: give a quality in [0, 1]")
        return float(params["min_quality"])
    return None if include == EVERY else include


def include_params(include: str | float | None) -> dict[str, Any]:
    """The form's parameters for an SDK ``include`` value (None: every label)."""
    if include is None:
        return {"include": EVERY}
    if isinstance(include, str):
        return {"include": include}
    return {"include": "threshold", "min_quality": float(include)}


class ExportTrainingSet(forms.FormOperator):
    operator_name = "export_training_set"
    operator_label = "DiffuPrompter: export training set"
    operator_description = (
        "The reviewed labels as COCO instance segmentation (exact RLE masks) or YOLOv5 "
        "segmentation; rejected labels are never exported"
    )
    default_delegated = False

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = forms.target_inputs(ctx)
        if not forms.detections_fields(ctx, inputs, "Pseudo-labels"):
            return forms.form(inputs, "Export training set")
        inputs.str("export_dir", label="Output folder", required=True)
        inputs.enum("dataset_type", ["coco", "yolov5"], label="Format", default="coco")
        include_input(inputs, ctx)
        if (ctx.params.get("dataset_type") or "coco") == "coco":
            inputs.enum(
                "masks",
                ["rle", "polygons"],
                label="COCO masks",
                default="rle",
                description="rle: exact masks; polygons: FiftyOne's traced outlines "
                "(holes lost, area = box)",
            )
        inputs.bool("overwrite", label="Replace an existing folder", default=False)
        return forms.form(inputs, "Export training set")

    def execute(self, ctx: Any) -> dict[str, Any]:
        from diffuprompter_plugin.export import export_training_set

        params = ctx.params
        dataset_type = params.get("dataset_type") or "coco"
        return export_training_set(
            ctx.target_view(),
            params["pred_field"],
            params["export_dir"],
            dataset_type=dataset_type,
            include=include_param(params),
            masks=params.get("masks") if dataset_type == "coco" else None,
            overwrite=bool(params.get("overwrite")),
            progress=forms.progress_reporter(ctx, "Export"),
        )

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        outputs.str("export_dir", label="Folder")
        outputs.str("writer", label="Writer")
        outputs.int("samples", label="Images")
        outputs.int("labels", label="Labels written")
        outputs.obj("per_class", label="Labels per class", view=types.JSONView())
        outputs.int("split_instances", label="Instances written as several polygons")
        return forms.form(outputs, "Export finished")

    def __call__(
        self,
        sample_collection: Any,
        pred_field: str,
        export_dir: str,
        dataset_type: str = "coco",
        include: str | float = "accepted",
        masks: str | None = None,
        overwrite: bool = False,
        delegate: bool = False,
    ) -> Any:
        """Runs the export from Python."""
        params = dict(pred_field=pred_field, export_dir=str(export_dir))
        params.update(dataset_type=dataset_type, masks=masks, overwrite=overwrite)
        params.update(include_params(include))
        return forms.execute_from_sdk(self, sample_collection, params, delegate)
