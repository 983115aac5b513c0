"""STAC items as scenes: a static catalogue built with pystac, an item
collection, a pystac-client search of a static API, and the operator; the
assets are COGs on the tests' local range server."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pystac
import pytest
from PIL import Image
from range_server import RangeServer
from remote_scenes import write_cog

from diffuprompter_plugin.importers import import_geotiffs, import_stac

PLUGIN = "@diffuprompter/diffuprompter"


def _item(k: int, assets: dict[str, str]) -> pystac.Item:
    item = pystac.Item(
        f"S2A_{k}",
        geometry=None,
        bbox=None,
        datetime=datetime(2024, 5, 1 + k, 10, 30, tzinfo=timezone.utc),
        properties={"eo:cloud_cover": 12.5 * k, "platform": "sentinel-2a", "gsd": 10},
        collection=None,
    )
    for key, href in assets.items():
        item.add_asset(key, pystac.Asset(href, media_type=pystac.MediaType.COG))
    return item


@pytest.fixture
def catalogue(tmp_path):
    """(server, catalogue folder, local scene paths): two scenes served over
    HTTP, a static catalogue of three items, the third without ``visual``."""
    scenes = [write_cog(tmp_path / f"scene_{k}.tif", 384, 256, seed=k) for k in range(2)]
    with RangeServer(tmp_path, lifetime=300) as server:
        catalog = pystac.Catalog("local", "Scenes on the tests' range server")
        for k in range(2):
            catalog.add_item(_item(k, {"visual": server.url(f"scene_{k}.tif")}))
        catalog.add_item(_item(2, {"B04": server.url("scene_0.tif")}))
        folder = tmp_path / "stac"
        catalog.normalize_hrefs(str(folder))
        catalog.save(pystac.CatalogType.SELF_CONTAINED)
        yield server, folder, scenes


def test_a_catalogue_folder_becomes_scene_samples(catalogue, dataset_name):
    server, folder, scenes = catalogue
    report = import_stac(folder, dataset_name, asset="visual", preview_size=48)
    assert report.added == 2
    assert report.skipped == [("S2A_2", "no asset 'visual' (its assets: B04)")]
    dataset = fo.load_dataset(dataset_name)
    first = dataset.sort_by("stac_id").first()
    assert first.filepath == server.url("scene_0.tif")
    assert (first.stac_id, first.platform, first.gsd) == ("S2A_0", "sentinel-2a", 10.0)
    assert first.datetime == datetime(2024, 5, 1, 10, 30)  # UTC
    assert sorted(dataset.values("cloud_cover")) == [0.0, 12.5]
    assert first.stac_properties["eo:cloud_cover"] == 0.0
    assert dataset.app_config.grid_media_field == "preview_path"
    assert server.served() < 0.2 * sum(p.stat().st_size for p in scenes)  # headers, overviews

    local = f"{dataset_name}-local"  # the same scene imported from its file
    try:
        import_geotiffs(scenes[0], local, preview_size=48)
        mine = fo.load_dataset(local).first()
        assert (first.crs, first.transform) == (mine.crs, mine.transform)
        np.testing.assert_array_equal(
            np.asarray(Image.open(first.preview_path)), np.asarray(Image.open(mine.preview_path))
        )
    finally:
        fo.delete_dataset(local)


def test_item_collections_json_files_and_items_import_alike(catalogue, dataset_name, tmp_path):
    server, folder, _ = catalogue
    items = pystac.ItemCollection(
        [_item(k, {"visual": server.url(f"scene_{k}.tif")}) for k in range(2)]
    )
    assert import_stac(items, dataset_name, preview_size=32).added == 2
    items.save_object(dest_href=str(tmp_path / "items.json"))
    again = import_stac(tmp_path / "items.json", dataset_name, preview_size=32)
    assert (again.added, again.existing) == (0, 2)  # the same assets: already there
    one = import_stac(folder / "S2A_2" / "S2A_2.json", dataset_name, asset="B04")
    assert (one.added, one.existing) == (0, 1)  # B04 is scene_0's file too
    assert len(fo.load_dataset(dataset_name)) == 2


def test_a_pystac_client_search_of_a_static_api(catalogue, dataset_name, tmp_path):
    pystac_client = pytest.importorskip("pystac_client", reason="a test extra")
    server, _, _ = catalogue
    api = server.url("api.json")
    features = [_item(k, {"visual": server.url(f"scene_{k}.tif")}).to_dict() for k in range(2)]
    (tmp_path / "search.json").write_text(
        json.dumps({"type": "FeatureCollection", "features": features, "links": []})
    )
    (tmp_path / "api.json").write_text(
        json.dumps(
            {
                "type": "Catalog",
                "id": "local-api",
                "description": "A static STAC API on the loopback",
                "stac_version": "1.0.0",
                "conformsTo": [
                    "https://api.stacspec.org/v1.0.0/core",
                    "https://api.stacspec.org/v1.0.0/item-search",
                ],
                "links": [
                    {"rel": "self", "href": api, "type": "application/json"},
                    {"rel": "root", "href": api, "type": "application/json"},
                    {
                        "rel": "search",
                        "href": server.url("search.json"),
                        "type": "application/geo+json",
                        "method": "POST",
                    },
                ],
            }
        )
    )
    search = pystac_client.Client.open(api).search(
        bbox=[14.9, 40.6, 15.1, 40.7], datetime="2024-05", max_items=10
    )
    report = import_stac(search, dataset_name, preview_size=32)
    assert report.added == 2
    assert sorted(fo.load_dataset(dataset_name).values("stac_id")) == ["S2A_0", "S2A_1"]
    assert any(s.method == "POST" and s.path == "/search.json" for s in server.log())


def test_bad_sources_are_refused_naming_them(tmp_path, dataset_name):
    with pytest.raises(ValueError, match="STAC file '.*nothing.json' does not exist"):
        import_stac(tmp_path / "nothing.json", dataset_name)
    with pytest.raises(ValueError, match="holds no catalog.json or collection.json"):
        import_stac(tmp_path, dataset_name)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="Cannot read STAC JSON '.*bad.json'"):
        import_stac(tmp_path / "bad.json", dataset_name)
    assert not fo.dataset_exists(dataset_name)


def test_operator_imports_a_stac_json_path(catalogue, dataset_name):
    _, folder, _ = catalogue
    result = foo.get_operator(f"{PLUGIN}/import_stac")(
        folder / "catalog.json", dataset_name=dataset_name, asset="visual", preview_size=64
    )
    assert result.result["added"] == 2
    assert result.result["skipped"] == [
        {"path": "S2A_2", "reason": "no asset 'visual' (its assets: B04)"}
    ]
    assert fo.load_dataset(dataset_name).count("stac_id") == 2
