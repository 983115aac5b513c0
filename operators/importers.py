"""Operators: import classification collections, iSAID, NWPU VHR-10 and GeoTIFF scenes."""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from diffuprompter_plugin.importers.categories import COLLECTIONS

from . import forms


class ImportOperator(forms.FormOperator):
    """Shared form (folder, dataset name) and execution of the importers."""

    default_delegated = False
    default_dataset = ""

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        self.root_input(inputs)
        inputs.str("dataset_name", label="Dataset", default=self.default_dataset, required=True)
        self.extra_inputs(inputs)
        return forms.form(inputs, self.operator_label)

    def root_input(self, inputs: types.Object, required: bool = True) -> None:
        """The form field ``root``: what to import (default: a folder)."""
        inputs.str(
            "root",
            label="Folder",
            description="Path on the machine that runs the import",
            required=required,
            view=types.FileExplorerView(choose_dir=True),
        )

    def source(self, ctx: Any) -> Any:
        """What the form asks to import: the folder's path."""
        root = ctx.params.get("root")
        if isinstance(root, dict):  # FileExplorerView returns {"absolute_path": ...}
            root = root.get("absolute_path")
        return root

    def extra_inputs(self, inputs: types.Object) -> None:
        """Importer-specific form fields."""

    @staticmethod
    def given(ctx: Any, *names: str) -> dict[str, Any]:
        """The named params the caller set; absent ones keep the importer's defaults."""
        return {n: ctx.params[n] for n in names if ctx.params.get(n) is not None}

    def run(self, ctx: Any, root: Any, name: str, progress: Any) -> Any:
        """Calls the importer; returns its ImportReport."""
        raise NotImplementedError

    def execute(self, ctx: Any) -> dict[str, Any]:
        name = ctx.params.get("dataset_name") or self.default_dataset
        report = self.run(ctx, self.source(ctx), name, forms.progress_reporter(ctx, "Import"))
        if not ctx.delegated:
            ctx.ops.open_dataset(name)
        return report.to_dict()

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        outputs.str("dataset", label="Dataset")
        outputs.int("added", label="Samples added")
        outputs.int("existing", label="Already imported")
        outputs.list("skipped", types.Object(), label="Skipped files", view=types.JSONView())
        return forms.form(outputs, "Import finished")

    def __call__(
        self,
        root: str | None = None,
        dataset_name: str | None = None,
        delegate: bool = False,
        **params: Any,
    ) -> Any:
        """Runs the import from Python; ``params`` are the form's extra fields."""
        root = None if root is None else str(root)
        params = {"root": root, "dataset_name": dataset_name, **params}
        params = {k: v for k, v in params.items() if v is not None}
        return foo.execute_operator(self.uri, params=params, request_delegation=delegate)


class ImportClassificationCollection(ImportOperator):
    operator_name = "import_classification_collection"
    operator_label = "DiffuPrompter: import a scene-classification collection"
    default_dataset = "rs-classification"

    def extra_inputs(self, inputs: types.Object) -> None:
        choices = ["auto", *sorted(COLLECTIONS), "DLR Munich"]
        inputs.enum(
            "collection",
            choices,
            label="Collection",
            default="auto",
            description="auto: recognise it by its folder name",
        )
        inputs.bool(
            "include_candidates",
            label="Include candidate classes",
            default=False,
            description="e.g. parking lot -> vehicle, overpass -> bridge",
        )
        inputs.int("tile_size", label="DLR tile size", default=512, min=64, max=4096)

    def run(self, ctx, root, name, progress):
        from diffuprompter_plugin.importers import import_classification_collection

        collection = ctx.params.get("collection", "auto")
        return import_classification_collection(
            root,
            name,
            collection=None if collection == "auto" else collection,
            progress=progress,
            **self.given(ctx, "include_candidates", "tile_size"),
        )


class ImportIsaid(ImportOperator):
    operator_name = "import_isaid"
    operator_label = "DiffuPrompter: import iSAID ground truth"
    default_dataset = "isaid-val"

    def extra_inputs(self, inputs: types.Object) -> None:
        inputs.enum("split", ["train", "val"], label="Split", default="val")
        inputs.int("patch_size", label="Patch size", default=512, min=64, max=4096)
        inputs.int("overlap", label="Patch overlap", default=0, min=0, max=4000)
        inputs.int("min_area", label="Min instance area (px)", default=10, min=1)
        inputs.bool(
            "full_scenes",
            label="Full scenes",
            default=False,
            description="One sample per scene at native size instead of patches",
        )

    def run(self, ctx, root, name, progress):
        from diffuprompter_plugin.importers import import_isaid

        options = self.given(ctx, "patch_size", "overlap", "min_area")
        if ctx.params.get("full_scenes"):
            options["patch_size"] = None
        split = ctx.params.get("split", "val")
        return import_isaid(root, split, name=name, progress=progress, **options)


class ImportNwpuVhr10(ImportOperator):
    operator_name = "import_nwpu_vhr10"
    operator_label = "DiffuPrompter: import NWPU VHR-10"
    default_dataset = "nwpu-vhr10"

    def extra_inputs(self, inputs: types.Object) -> None:
        inputs.str(
            "coco_json",
            label="Instance-mask COCO JSON",
            description="Optional; default <folder>/annotations.json when present",
        )

    def run(self, ctx, root, name, progress):
        from diffuprompter_plugin.importers import import_nwpu_vhr10

        return import_nwpu_vhr10(root, name, progress=progress, **self.given(ctx, "coco_json"))


class ImportGeotiffs(ImportOperator):
    operator_name = "import_geotiffs"
    operator_label = "DiffuPrompter: import GeoTIFF scenes"
    default_dataset = "geotiff-scenes"

    def extra_inputs(self, inputs: types.Object) -> None:
        inputs.str(
            "bands",
            label="Bands (R, G, B)",
            description="One or three 1-based band indices, e.g. 4,3,2, read by the "
            "labelling and shown in the preview; empty: the bands tagged red, green and "
            "blue, else 1,2,3, else band 1",
        )
        inputs.int("preview_size", label="Preview size (px)", default=1024, min=64, max=8192)

    def root_input(self, inputs: types.Object) -> None:
        super().root_input(inputs, required=False)
        inputs.str(
            "urls",
            label="Or scene URLs",
            description="Cloud-optimised GeoTIFFs where they live, one per line (https:// "
            "or s3://): read window by window, never downloaded whole",
            view=types.TextFieldView(multiline=True, rows=3),
        )

    def source(self, ctx: Any) -> str | list[str]:
        """The folder, or the URLs given one per line (exactly one of them).

        Raises:
            ValueError: neither or both given.
        """
        folder = super().source(ctx)
        lines = (ctx.params.get("urls") or "").splitlines()  # a key may hold spaces
        urls = [line.strip() for line in lines if line.strip()]
        if bool(folder) == bool(urls):
            raise ValueError("Choose a folder of scenes or give scene URLs, one of the two")
        return urls or folder

    @staticmethod
    def bands(ctx: Any) -> list[int] | None:
        """The form's ``bands`` text as band indices (None when empty)."""
        text = ctx.params.get("bands") or ""
        try:
            return [int(b) for b in text.replace(",", " ").split()] or None
        except ValueError as e:
            raise ValueError(f"bands must be integers like 4,3,2, got {text!r}") from e

    def run(self, ctx, root, name, progress):
        from diffuprompter_plugin.importers import import_geotiffs

        return import_geotiffs(
            root, name, bands=self.bands(ctx), progress=progress, **self.given(ctx, "preview_size")
        )
