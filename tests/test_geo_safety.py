"""GIS files are never clobbered, footprints are valid GeoJSON, GCP-only and
truncated GeoTIFFs are handled (issue 22)."""

from __future__ import annotations

import hashlib
import os

import fiftyone as fo
import fiftyone.operators as foo
import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from fiftyone.operators.executor import ExecutionError
from pyproj import CRS, Transformer
from rasterio.control import GroundControlPoint
from rasterio.transform import from_origin
from test_geo import ORIGIN, UTM33, _rect, _scene_dataset, _write_scene

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
    with pytest.raises(FileExistsError, match=r"Layer 'A' exists"):  # GeoPackage ignores case
        export_geo(dataset, "pred", path, layer="A")

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


def test_overwriting_a_layer_replaces_it_in_any_case_and_renews_its_oriented_boxes(tmp_path):
    path = tmp_path / "city.gpkg"
    one = _scene_dataset(tmp_path, [("ship", _rect((40, 60), 1, 1, 4, 4), 0.5)])
    export_geo(one, "pred", path, layer="Ships", oriented_boxes=True)
    export_geo(one, "pred", path, layer="roads")
    two = _scene_dataset(
        tmp_path,
        [("ship", _rect((40, 60), 1, 1, 4, 4), 0.5), ("car", _rect((40, 60), 20, 20, 3, 3), 0.7)],
    )
    out = export_geo(two, "pred", path, layer="ships", overwrite=True)  # no oriented_boxes=
    assert out["oriented_layer"] == "ships_oriented"  # kept in step with the layer
    assert sorted(pyogrio.list_layers(path)[:, 0]) == ["roads", "ships", "ships_oriented"]
    assert len(gpd.read_file(path, layer="ships")) == 2
    assert len(gpd.read_file(path, layer="ships_oriented")) == 2
    assert len(gpd.read_file(path, layer="roads")) == 1


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


def _gcp_scene(path, corners):
    """A 60 x 40 GeoTIFF georeferenced by GCPs alone: ``corners`` maps
    (col, row) to UTM (x, y)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=60, height=40, count=1, dtype="uint8")
    gcps = [GroundControlPoint(row, col, x, y) for (col, row), (x, y) in corners.items()]
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((1, 40, 60), 100, np.uint8))
        dst.gcps = (gcps, CRS.from_user_input(UTM33))
    return path


def test_gcp_only_geotiff_is_georeferenced_from_its_gcps(tmp_path, dataset_name):
    x0, y0 = ORIGIN
    exact = {(c, r): (x0 + 2 * c, y0 - 2 * r) for c, r in [(0, 0), (60, 0), (0, 40), (60, 40)]}
    path = _gcp_scene(tmp_path / "scenes" / "gcp.tif", exact)
    with rasterio.open(path) as src:
        assert src.crs is None and src.transform.is_identity and len(src.gcps[0]) == 4
    with FileRaster(path) as raster:  # the heatmap GeoTIFFs are georeferenced the same way
        assert raster.georef["transform"].almost_equals(from_origin(x0, y0, 2.0, 2.0))
    assert import_geotiffs(tmp_path / "scenes", dataset_name).added == 1
    dataset = fo.load_dataset(dataset_name)
    sample = dataset.first()
    assert CRS.from_wkt(sample.crs) == CRS.from_user_input(UTM33)
    assert sample.transform == pytest.approx([2.0, 0.0, x0, 0.0, -2.0, y0])
    sample["pred"] = fo.Detections(
        detections=[fo.Detection.from_mask(_rect((40, 60), 10, 5, 10, 10), label="tank")]
    )
    sample.save()
    export_geo(dataset, "pred", tmp_path / "gcp.gpkg")
    (geometry,) = gpd.read_file(tmp_path / "gcp.gpkg").geometry
    assert geometry.bounds == pytest.approx((x0 + 20, y0 - 30, x0 + 40, y0 - 10))


def test_not_georeferenced_export_says_exactly_why(tmp_path, dataset_name):
    x0, y0 = ORIGIN
    warped = {(0, 0): (x0, y0), (60, 0): (x0 + 120, y0), (0, 40): (x0, y0 - 80)}
    warped[(60, 40)] = (x0 + 160, y0 - 120)  # no affine transform takes all four
    _gcp_scene(tmp_path / "scenes" / "warped.tif", warped)
    _write_scene(tmp_path / "scenes" / "bare.tif", np.zeros((1, 40, 60), np.uint8), crs=None)
    assert import_geotiffs(tmp_path / "scenes", dataset_name).added == 2
    dataset = fo.load_dataset(dataset_name)
    for sample in dataset:
        assert not sample.has_field("crs") or sample.crs is None
        sample["pred"] = fo.Detections(
            detections=[fo.Detection.from_mask(_rect((40, 60), 1, 1, 4, 4), label="x")]
        )
        sample.save()
    for name, why in (
        ("warped.tif", r"no affine transform fits its 4 ground control points .* gdalwarp"),
        ("bare.tif", r"the file has no CRS, geotransform or ground control points"),
    ):
        view = dataset.match(fo.ViewField("filepath").ends_with(name))
        with pytest.raises(ValueError, match=rf"{name}' has no georeferencing: {why}") as e:
            export_geo(view, "pred", tmp_path / "x.gpkg")
        assert "import_geotiffs" not in str(e.value)
    assert not (tmp_path / "x.gpkg").exists()


def test_scenes_across_the_antimeridian_store_valid_geojson(tmp_path, dataset_name):
    data = np.full((1, 60, 60), 50, np.uint8)
    degree = from_origin(179.5, 1.0, 1 / 60, 1 / 60)  # lon 179.5 to 180.5, lat 0 to 1
    _write_scene(tmp_path / "s" / "lonlat.tif", data, crs="EPSG:4326", transform=degree)
    x, y = Transformer.from_crs(4326, 32660, always_xy=True).transform(179.9, 10.0)
    utm = from_origin(x - 5_000, y, 500.0, 500.0)  # 30 km east across 180 in UTM 60N
    _write_scene(tmp_path / "s" / "utm.tif", data, crs="EPSG:32660", transform=utm)
    _write_scene(tmp_path / "s" / "plain.tif", data)  # UTM 33N, 15 deg E: one part
    assert import_geotiffs(tmp_path / "s", dataset_name).added == 3
    dataset = fo.load_dataset(dataset_name)
    by_name = {os.path.basename(s.filepath): s for s in dataset}
    for name in ("lonlat.tif", "utm.tif"):
        sample = by_name[name]
        assert -180 <= sample.location.point[0] <= 180 and sample.location.polygon is None
        parts = [shapely.Polygon(p[0], p[1:]) for p in sample.footprint.polygons]
        assert len(parts) == 2 and all(p.is_valid for p in parts)
        lons = [x for p in parts for x, _ in p.exterior.coords]
        assert min(lons) >= -180 and max(lons) <= 180 and {180.0, -180.0} <= set(lons)
    lonlat = shapely.MultiPolygon(
        [shapely.Polygon(p[0]) for p in by_name["lonlat.tif"].footprint.polygons]
    )
    assert lonlat.area == pytest.approx(1.0, abs=1e-6)  # the whole square degree, in two parts
    plain = by_name["plain.tif"]
    assert (
        len(plain.footprint.polygons) == 1
        and plain.location.polygon == plain.footprint.polygons[0]
    )

    # MongoDB's 2dsphere indexes build (a longitude of 180.5 made them fail)
    for field in ("location.point", "location.polygon", "footprint.polygons"):
        dataset.create_index([(field, "2dsphere")])
    for lon in (179.7, -179.8):  # both sides of the antimeridian find the lon/lat scene
        point = {"type": "Point", "coordinates": [lon, 0.5]}
        query = {"footprint.polygons": {"$geoIntersects": {"$geometry": point}}}
        found = dataset.mongo([{"$match": query}]).values("filepath")
        assert [os.path.basename(f) for f in found] == ["lonlat.tif"]
