"""Operator: export instance masks as georeferenced polygons (GeoPackage, GeoJSON)."""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import forms


class ExportGeo(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return forms.operator_config(
            "export_geo",
            "DiffuPrompter: export polygons to GeoPackage/GeoJSON",
            "Instance masks of GeoTIFF scenes as georeferenced polygons for QGIS and GIS tools",
            default_delegated=False,
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        inputs.view_target(ctx)
        fields = forms.detections_fields(ctx, inputs)
        if not fields:
            return types.Property(inputs, view=types.View(label="Export polygons"))
        inputs.enum("pred_field", fields, label="Instances", required=True, default=fields[0])
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
        return types.Property(inputs, view=types.View(label="Export polygons"))

    def execute(self, ctx: Any) -> dict[str, Any]:
        from diffuprompter_plugin.geo import export_geo

        params = ctx.params
        return export_geo(
            ctx.target_view(),
            params["pred_field"],
            params["path"],
            crs=params.get("crs") or None,
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
        return types.Property(outputs, view=types.View(label="Export finished"))

    def __call__(
        self,
        sample_collection: Any,
        pred_field: str,
        path: str,
        crs: str | None = None,
        layer: str | None = None,
        overwrite: bool = False,
        delegate: bool = False,
    ) -> Any:
        """Runs the export from Python."""
        params = dict(
            pred_field=pred_field, path=str(path), crs=crs, layer=layer, overwrite=overwrite
        )
        return forms.execute_from_sdk(self, sample_collection, params, delegate)
