"""Operator: export instance masks as georeferenced polygons (GeoPackage, GeoJSON)."""

from __future__ import annotations

from typing import Any

import fiftyone.operators.types as types

from . import forms
from .export_training_set import EVERY, include_input, include_param, include_params


class ExportGeo(forms.FormOperator):
    operator_name = "export_geo"
    operator_label = "DiffuPrompter: export polygons to GeoPackage/GeoJSON"
    operator_description = (
        "Instance masks of GeoTIFF scenes as georeferenced polygons for QGIS and GIS tools"
    )
    default_delegated = False

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = forms.target_inputs(ctx)
        if not forms.detections_fields(ctx, inputs, "Instances"):
            return forms.form(inputs, "Export polygons")
        inputs.str(
            "path",
            label="Output file",
            description=".gpkg: native CRS (QGIS), a layer added to an existing "
            "GeoPackage; .geojson: WGS84 (RFC 7946)",
            required=True,
        )
        inputs.str("layer", label="GeoPackage layer (optional)", description="default: the field")
        inputs.bool(
            "overwrite",
            label="Replace",
            default=False,
            description="Replace a GeoPackage layer of that name, or an existing GeoJSON file",
        )
        inputs.str(
            "crs",
            label="GeoPackage CRS (optional)",
            description="e.g. EPSG:32633; needed when the scenes are in different CRSs",
        )
        include_input(inputs, ctx, every=True)
        return forms.form(inputs, "Export polygons")

    def execute(self, ctx: Any) -> dict[str, Any]:
        from diffuprompter_plugin.geo import export_geo

        params = ctx.params
        return export_geo(
            ctx.target_view(),
            params["pred_field"],
            params["path"],
            crs=params.get("crs") or None,
            include=include_param(params, default=EVERY),
            layer=params.get("layer") or None,
            overwrite=bool(params.get("overwrite", False)),
            progress=forms.progress_reporter(ctx, "Export"),
        )

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        outputs.str("path", label="File")
        outputs.int("samples", label="Samples")
        outputs.int("features", label="Polygons written")
        outputs.str("crs", label="CRS")
        return forms.form(outputs, "Export finished")

    def __call__(
        self,
        sample_collection: Any,
        pred_field: str,
        path: str,
        crs: str | None = None,
        include: str | float | None = None,
        layer: str | None = None,
        overwrite: bool = False,
        delegate: bool = False,
    ) -> Any:
        """Runs the export from Python."""
        params = dict(
            pred_field=pred_field, path=str(path), crs=crs, layer=layer, overwrite=overwrite
        )
        params.update(include_params(include))
        return forms.execute_from_sdk(self, sample_collection, params, delegate)
