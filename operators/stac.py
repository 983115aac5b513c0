"""Operator: import STAC items (a static catalogue or item collection) as scenes."""

from __future__ import annotations

import fiftyone.operators.types as types

from .importers import ImportGeotiffs


class ImportStac(ImportGeotiffs):
    operator_name = "import_stac"
    operator_label = "DiffuPrompter: import scenes from a STAC catalogue"
    default_dataset = "stac-scenes"

    def root_input(self, inputs: types.Object) -> None:
        inputs.str(
            "root",
            label="STAC JSON",
            description="A catalogue, collection, item or item collection JSON (a path on "
            "the machine that runs the import, or its URL), or a static catalogue's folder",
            required=True,
        )

    def extra_inputs(self, inputs: types.Object) -> None:
        inputs.str(
            "asset",
            label="Asset",
            default="visual",
            description="The asset of each item to import, e.g. visual; items without it "
            "are listed as skipped",
        )
        super().extra_inputs(inputs)

    def run(self, ctx, root, name, progress):
        from diffuprompter_plugin.importers import import_stac

        return import_stac(
            root,
            name,
            bands=self.bands(ctx),
            progress=progress,
            **self.given(ctx, "asset", "preview_size"),
        )
