"""GIS files are never clobbered, footprints are valid GeoJSON, GCP-only and
truncated GeoTIFFs are handled (issue 22)."""

from __future__ import annotations

import hashlib

import fiftyone.operators as foo
import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from fiftyone.operators.executor import ExecutionError
from test_geo import UTM33, _rect, _scene_dataset, _write_scene

from diffuprompter_plugin.engine.errors import InputImageError
from diffuprompter_plugin.engine.raster import FileRaster
from diffuprompter_plugin.geo import export_geo
from diffuprompter_plugin.importers import import_geotiffs

PLUGIN = "@diffuprompter/diffuprompter"


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_into_a_geopackage_keeps_its_other_layers(tmp_path, monkeypatch):
    path = tmp_path / "city.gpkg"
    roads = gpd.GeoDataFrame(
        {"name": ["main st"]}, geometry=[shapely.LineString([(0, 0), (1, 1)])], crs=UTM33
    )
    roads.to_file(path, layer="roads", driver="GPKG")
    dataset = _scene_dataset(tmp_path, [("ship", _rect((40, 60), 1, 1, 4, 4), 0.5)])
    export_geo(dataset, "pred", path, layer="a")
    export_geo(dataset, "pred", path, layer="b")
    assert sorted(pyogrio.list_layers(path)[:, 0]) == ["a", "b", "roads"]
    assert gpd.read_file(path, layer="roads").name.tolist() == ["main st"]

    before = _digest(path)
    with pytest.raises(FileExistsError, match=r"Layer 'a' exists in .*city.gpkg.*overwrite=True"):
        export_geo(dataset, "pred", path, layer="a")
    assert _digest(path) == before  # refused before anything was written

    two = _scene_dataset(
        tmp_path,
        [("ship", _rect((40, 60), 1, 1, 4, 4), 0.5), ("car", _rect((40, 60), 20, 20, 3, 3), 0.7)],
    )
    assert export_geo(two, "pred", path, layer="a", overwrite=True)["features"] == 2
    assert sorted(pyogrio.list_layers(path)[:, 0]) == ["a", "b", "roads"]
    assert len(gpd.read_file(path, layer="a")) == 2 and len(gpd.read_file(path, layer="b")) == 1
    assert gpd.read_file(path, layer="roads").name.tolist() == ["main st"]

    # atomic: a write that fails half-way leaves the GeoPackage as it was
    before = _digest(path)
    write = gpd.GeoDataFrame.to_file

    def broken(self, filename, **kwargs):
        write(self, filename, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(gpd.GeoDataFrame, "to_file", broken)
    with pytest.raises(OSError, match="disk full"):
        export_geo(two, "pred", path, layer="c")
    monkeypatch.undo()
    assert _digest(path) == before and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in tmp_path.iterdir() if not p.name.startswith("tmp")
    )

    geojson = tmp_path / "ships.geojson"
    export_geo(dataset, "pred", geojson)
    with pytest.raises(FileExistsError, match=r"ships.geojson' exists; pass overwrite=True"):
        export_geo(two, "pred", geojson)
    assert len(gpd.read_file(geojson)) == 1
    export_geo(two, "pred", geojson, overwrite=True)
    assert len(gpd.read_file(geojson)) == 2

    other = tmp_path / "notes.gpkg"
    other.write_text("not a geopackage")
    with pytest.raises(FileExistsError, match="is not a GeoPackage"):
        export_geo(dataset, "pred", other)
    assert other.read_text() == "not a geopackage"


def test_export_operator_adds_layers_and_refuses_to_replace(tmp_path):
    dataset = _scene_dataset(tmp_path, [("roof", _rect((40, 60), 1, 1, 5, 5), 0.5)])
    export = foo.get_operator(f"{PLUGIN}/export_geo")
    path = tmp_path / "roofs.gpkg"
    assert export(dataset, "pred", path).result["features"] == 1
    assert export(dataset, "pred", path, layer="again").result["features"] == 1
    with pytest.raises(ExecutionError, match="Layer 'pred' exists in .* overwrite=True"):
        export(dataset, "pred", path)
    assert export(dataset, "pred", path, overwrite=True).result["features"] == 1
    assert sorted(pyogrio.list_layers(path)[:, 0]) == ["again", "pred"]


def _truncated(path, dtype):
    data = np.random.default_rng(0).integers(0, 250, (3, 128, 128)).astype(dtype)
    _write_scene(path, data)
    full = path.read_bytes()
    path.write_bytes(full[: len(full) // 2])
    return path


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_truncated_tiff_names_the_file_and_gdals_message(tmp_path, dataset_name, dtype):
    path = _truncated(tmp_path / "scenes" / f"cut-{dtype}.tif", dtype)
    report = import_geotiffs(tmp_path / "scenes", dataset_name)
    assert report.added == 0
    ((skipped, reason),) = report.skipped
    assert skipped == str(path)
    assert f"Cannot read image '{path}'" in reason
    assert "TIFFReadEncodedStrip" in reason and "See previous exception" not in reason
    with (
        pytest.raises(InputImageError, match=r"cut-.*\.tif'.*TIFFReadEncoded"),
        FileRaster(path) as raster,
    ):
        raster.read((0, 0, 128, 128))
