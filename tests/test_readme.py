"""Every ```python block of the README runs, in order and in one namespace,
as a reader would run them, with the tiny models in place of the real ones.

``SUBSTITUTIONS`` swaps real model ids and slow settings for the tiny
models'; ``SKIPPED`` names the blocks that need data a test cannot hold,
with the reason. Both must still match the README, so a stale entry fails
too. A block added to the README runs here unless it is listed.
"""

from __future__ import annotations

import re
from pathlib import Path

import fiftyone as fo
import numpy as np
import pyogrio
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"

SKIPPED = {
    "import_classification_collection(": "needs the paper's collections under /data",
    "Client.open(": "searches a public STAC API on the internet",
    "evaluate_pseudo_labels(": "needs iSAID with ground-truth masks and a labelled subset",
    "review_view(": "needs labels with quality signals; tests/test_export.py runs it",
    "calibrate_acceptance(": "needs a person's verdicts; tests/test_export.py runs it",
}
"""A string found in a block -> why that block does not run here."""


def substitutions(sd: str, sam: str, data: Path) -> dict[str, str]:
    """README text -> what runs here: the tiny models, at their 64 px size,
    and ``data`` for the README's ``/data`` folder. The operator run that the
    README queues runs at once here (no worker), so that the resume queued
    after it finds its run."""
    tiny = f"sd_model={sd!r}, sam_model={sam!r}, resolution=64, crf=False, device='cpu'"
    return {
        '"/data/scenes': f'"{data}/scenes',
        '"/data/stac': f'"{data}/stac',
        '"/data/ships': f'"{data}/ships',
        '"stable-diffusion-v1-5/stable-diffusion-v1-5"': repr(sd),
        '"vit_h"': repr(sam),
        "DiffuPrompterConfig(loops=50, threshold=0.4)": (
            "DiffuPrompterConfig(loops=2, threshold=0.4, resolution=64, crf=False)"
        ),
        'class_field="ground_truth", loops=50, delegate=True': (
            f'class_field="ground_truth", loops=2, {tiny}, delegate=False'
        ),
    }


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def _reader_files(folder: Path) -> None:
    """The images, GeoTIFF scenes and persistent dataset the README's
    snippets name."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    (folder / "scenes").mkdir()
    for k in range(2):  # UTM 33N, 0.5 m pixels
        with rasterio.open(
            folder / "scenes" / f"scene_{k}.tif", "w", driver="GTiff", width=96, height=64,
            count=3, dtype="uint8", crs="EPSG:32633",
            transform=from_origin(500000 + 100 * k, 4500000, 0.5, 0.5),
        ) as dst:  # fmt: skip
            dst.write(rng.integers(0, 255, (3, 64, 96), dtype=np.uint8))
    _static_catalogue(folder)
    for name in ("tank_farm.tif", "harbour.png"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / name)
    dataset = fo.Dataset("aid-subset", persistent=True)
    dataset.add_samples(
        fo.Sample(
            filepath=str(folder / "harbour.png"), ground_truth=fo.Classification(label=label)
        )
        for label in ("ship", "harbor")
    )


def _static_catalogue(folder: Path) -> None:
    """A STAC catalogue in ``folder/stac``: the two scenes as items with a
    ``visual`` asset, and a third item without one."""
    from datetime import datetime, timezone

    import pystac

    catalog = pystac.Catalog("scenes", "The README's scenes")
    for k, asset in enumerate(["visual", "visual", "B04"]):
        item = pystac.Item(
            f"scene_{k}", None, None, datetime(2024, 6, k + 1, tzinfo=timezone.utc),
            {"eo:cloud_cover": 5.0 * k, "platform": "sentinel-2a"},
        )  # fmt: skip
        href = str(folder / "scenes" / f"scene_{k % 2}.tif")
        item.add_asset(asset, pystac.Asset(href, media_type=pystac.MediaType.COG))
        catalog.add_item(item)
    catalog.normalize_hrefs(str(folder / "stac"))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)


def test_every_readme_python_block_runs(tiny_models, tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text())
    swaps = substitutions(*tiny_models, tmp_path)
    assert all(any(key in b for b in blocks) for key in [*swaps, *SKIPPED]), "stale entry"
    monkeypatch.chdir(tmp_path)
    _reader_files(tmp_path)
    namespace: dict = {}
    ran = 0
    try:
        for index, block in enumerate(blocks):
            if any(key in block for key in SKIPPED):
                continue
            for old, new in swaps.items():
                block = block.replace(old, new)
            exec(compile(block, f"README.md python block {index + 1}", "exec"), namespace)
            ran += 1
        assert ran == len(blocks) - sum(any(k in b for k in SKIPPED) for b in blocks)
        assert namespace["results"].processed == 2
        dataset = namespace["dataset"]
        assert not dataset.has_sample_field("dp_strict")  # deleted with its run "dp_aid"
        assert dataset.list_brain_runs() == ["dp", "dp_archive"]  # operators, several GPUs
        assert dataset.count("dp_instances") == 2
        status = namespace["pseudo_labels_status"](dataset, "dp_archive")
        assert (status["pending"], status["done"]) == (2, 0)  # queued for workers
        scenes = fo.load_dataset("scenes")
        assert scenes.count("dp_instances") == 2 and scenes.first().crs is not None
        assert (tmp_path / "scenes_dp.gpkg").stat().st_size > 0  # the GIS block's export
        assert (tmp_path / "scenes_dp.geojson").stat().st_size > 0
        stac_scenes = fo.load_dataset("stac-scenes")  # the STAC block's
        assert sorted(stac_scenes.values("stac_id")) == ["scene_0", "scene_1"]
        assert namespace["report"].skipped == [("scene_2", "no asset 'visual' (its assets: B04)")]
        assert stac_scenes.count("dp_ships") == 2
        assert sorted(p.name for p in (tmp_path / "ships_dota").iterdir()) == [
            "scene_0.txt",
            "scene_1.txt",
        ]
        assert "dp_ships_oriented" in dict(pyogrio.list_layers(tmp_path / "ships.gpkg"))
    finally:
        for name in ("aid-subset", "scenes", "stac-scenes"):
            if fo.dataset_exists(name):
                fo.delete_dataset(name)
