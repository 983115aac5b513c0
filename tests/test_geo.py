"""GeoTIFF scenes: import with previews, georeferenced polygon export, operators."""

from __future__ import annotations

import json
import os

import fiftyone as fo
import fiftyone.operators as foo
import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from helpers import StubModel
from PIL import Image
from pyproj import CRS, Geod, Transformer
from rasterio import Affine
from rasterio.features import rasterize
from rasterio.transform import from_origin

from diffuprompter_plugin.engine.image import to_rgb_uint8
from diffuprompter_plugin.engine.raster import FileRaster, RasterFile
from diffuprompter_plugin.geo import area_m2, export_geo, mask_geometry
from diffuprompter_plugin.importers import import_geotiffs
from diffuprompter_plugin.labelling import compute_pseudo_labels
from diffuprompter_plugin.labels import sample_image

UTM33 = "EPSG:32633"
ORIGIN = (500_000.0, 5_000_000.0)  # UTM 33N, 15 deg E, about 45.15 deg N
PLUGIN = "@diffuprompter/diffuprompter"


def _write_scene(path, data, crs=UTM33, transform=None, nodata=None):
    """Writes a (bands, rows, cols) array as a GeoTIFF."""
    bands, height, width = data.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=width, height=height, count=bands, dtype=data.dtype)
    if crs is not None:
        profile.update(crs=crs, transform=transform or from_origin(*ORIGIN, 2.0, 2.0))
    with rasterio.open(path, "w", nodata=nodata, **profile) as dst:
        dst.write(data)
    return path


def _rect(shape, col, row, width, height):
    mask = np.zeros(shape, bool)
    mask[row : row + height, col : col + width] = True
    return mask


def _scene_dataset(tmp_path, masks, crs=UTM33, transform=None, size=(60, 40)):
    """One georeferenced sample with instances from full-scene bool masks."""
    width, height = size
    dataset = fo.Dataset()
    path = tmp_path / f"scene-{os.urandom(2).hex()}.tif"
    _write_scene(path, np.zeros((1, height, width), np.uint8), crs=None)
    transform = transform or from_origin(*ORIGIN, 2.0, 2.0)
    dataset.add_sample(
        fo.Sample(
            filepath=str(path),
            metadata=fo.ImageMetadata(width=width, height=height),
            crs=CRS.from_user_input(crs).to_wkt(),
            transform=list(transform)[:6],
            pred=fo.Detections(
                detections=[
                    fo.Detection.from_mask(m, label=label, confidence=score)
                    for label, m, score in masks
                ]
            ),
        )
    )
    return dataset


def test_holes_and_parts_trace_pixel_edges():
    mask = np.zeros((12, 12), bool)
    mask[1:9, 1:9] = True
    mask[3:7, 3:7] = False  # a 4 x 4 hole
    mask[4:6, 4:6] = True  # an island inside the hole
    mask[10:12, 10:12] = True  # a separate blob
    geometry = mask_geometry(mask, Affine.identity())
    assert geometry.geom_type == "MultiPolygon" and geometry.is_valid
    parts = sorted(geometry.geoms, key=lambda p: -p.area)
    assert [p.area for p in parts] == [64 - 16, 4, 4]
    assert len(parts[0].interiors) == 1 and parts[0].interiors[0].bounds == (3, 3, 7, 7)
    assert parts[0].bounds == (1, 1, 9, 9)  # pixel corners, not centres
    assert all(p.exterior.is_ccw for p in parts)
    back = rasterize([(geometry, 1)], out_shape=mask.shape, dtype=np.uint8).astype(bool)
    np.testing.assert_array_equal(back, mask)
    assert mask_geometry(np.zeros((3, 3), bool), Affine.identity()).is_empty


def test_polygon_coordinates_map_back_through_the_transform(tmp_path):
    # a rotated-free but non-square-pixel transform, 0.5 m x 0.25 m
    transform = Affine(0.5, 0.0, ORIGIN[0], 0.0, -0.25, ORIGIN[1])
    scene = np.zeros((40, 60), bool)
    scene[7:19, 23:31] = True
    scene[10:13, 26:28] = False  # a hole
    dataset = _scene_dataset(tmp_path, [("ship", scene, 0.9)], transform=transform)
    path = tmp_path / "ships.gpkg"
    export_geo(dataset, "pred", path)
    (geometry,) = gpd.read_file(path).geometry
    cols, rows = zip(*[~transform @ xy for xy in geometry.geoms[0].exterior.coords], strict=True)
    assert (min(cols), min(rows), max(cols), max(rows)) == pytest.approx((23, 7, 31, 19))
    assert np.allclose(cols, np.round(cols)) and np.allclose(rows, np.round(rows))
    assert transform @ (23, 7) in list(geometry.geoms[0].exterior.coords)
    pixels = rasterize([(geometry, 1)], out_shape=scene.shape, transform=transform)
    np.testing.assert_array_equal(pixels.astype(bool), scene)


def test_gpkg_keeps_native_crs_and_geojson_is_wgs84(tmp_path):
    square = _rect((40, 60), 10, 5, 10, 10)  # 10 x 10 px of 2 m: 400 m^2
    parts = _rect((40, 60), 40, 20, 3, 3) | _rect((40, 60), 50, 30, 2, 2)
    dataset = _scene_dataset(tmp_path, [("tank", square, 0.8), ("car", parts, None)])
    out = export_geo(dataset, "pred", tmp_path / "out" / "labels.gpkg")
    assert (out["samples"], out["features"]) == (1, 2)
    assert pyogrio.list_layers(tmp_path / "out" / "labels.gpkg").tolist() == [
        ["pred", "MultiPolygon"]
    ]
    gpkg = gpd.read_file(tmp_path / "out" / "labels.gpkg").set_index("label")
    assert gpkg.crs == CRS.from_user_input(UTM33)
    assert gpkg.loc["tank", "area_m2"] == 400.0 and gpkg.loc["tank", "area_px"] == 100
    assert gpkg.loc["car", "area_px"] == 13 and len(gpkg.loc["car", "geometry"].geoms) == 2
    assert gpkg.loc["tank", "score"] == pytest.approx(0.8)
    assert np.isnan(gpkg.loc["car", "score"])
    sample = dataset.first()
    assert set(gpkg.sample_id) == {sample.id} and set(gpkg.filepath) == {sample.filepath}
    x0, y0 = ORIGIN[0] + 20, ORIGIN[1] - 10
    assert gpkg.loc["tank", "geometry"].bounds == (x0, y0 - 20, x0 + 20, y0)

    export_geo(dataset, "pred", tmp_path / "labels.geojson")
    data = json.loads((tmp_path / "labels.geojson").read_text())
    assert "crs" not in data
    tank = next(f for f in data["features"] if f["properties"]["label"] == "tank")
    lonlat = shapely.geometry.shape(tank["geometry"])
    to_lonlat = Transformer.from_crs(UTM33, "EPSG:4326", always_xy=True)
    assert lonlat.bounds[0] == pytest.approx(to_lonlat.transform(x0, y0)[0], abs=1e-6)
    assert 15.0 < lonlat.centroid.x < 15.01 and 45.1 < lonlat.centroid.y < 45.2
    assert abs(Geod(ellps="WGS84").geometry_area_perimeter(lonlat)[0]) == pytest.approx(
        400, rel=2e-3
    )  # UTM grid area vs ellipsoidal area: the 0.9996 scale factor
    assert tank["properties"]["area_m2"] == 400.0


def test_area_on_a_geographic_crs_is_geodesic():
    square = shapely.box(15.0, 45.0, 15.01, 45.01)
    geod = Geod(ellps="WGS84")
    expected = abs(geod.geometry_area_perimeter(square)[0])
    assert area_m2(square, CRS.from_epsg(4326)) == pytest.approx(expected)
    assert 870_000 < expected < 880_000  # 786 m x 1,112 m at 45 deg N
    feet = CRS.from_epsg(2263)  # NY Long Island, US survey feet
    assert area_m2(shapely.box(0, 0, 100, 100), feet) == pytest.approx(929.0341, rel=1e-6)


def test_samples_without_georeferencing_are_refused(tmp_path):
    dataset = _scene_dataset(tmp_path, [("ship", _rect((40, 60), 1, 1, 4, 4), 0.5)])
    bare = tmp_path / "plain.png"
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(bare)
    dataset.add_sample(
        fo.Sample(filepath=str(bare), metadata=fo.ImageMetadata(width=60, height=40))
    )
    with pytest.raises(ValueError, match=r"plain.png' has no georeferencing"):
        export_geo(dataset, "pred", tmp_path / "x.gpkg")
    assert not list(tmp_path.glob("*.gpkg"))
    with pytest.raises(ValueError, match="Unknown format of .*x.shp"):
        export_geo(dataset, "pred", tmp_path / "x.shp")
    dataset.add_sample_field("heat", fo.EmbeddedDocumentField, embedded_doc_type=fo.Heatmap)
    with pytest.raises(ValueError, match="Field 'heat' holds Heatmap: export_geo takes"):
        export_geo(dataset, "heat", tmp_path / "x.gpkg")
    with pytest.raises(ValueError, match="Field 'nope' does not exist"):
        export_geo(dataset, "nope", tmp_path / "x.gpkg")
    assert not list(tmp_path.glob("*.gpkg"))


def test_several_crs_need_an_explicit_one(tmp_path):
    first = _scene_dataset(tmp_path, [("ship", _rect((40, 60), 0, 0, 2, 2), 0.5)])
    other = _scene_dataset(tmp_path, [("ship", _rect((40, 60), 0, 0, 2, 2), 0.5)], crs=3035)
    first.add_collection(other)
    with pytest.raises(ValueError, match="2 CRSs .* pass crs="):
        export_geo(first, "pred", tmp_path / "x.gpkg")
    out = export_geo(first, "pred", tmp_path / "x.gpkg", crs=UTM33)
    assert out["features"] == 2 and gpd.read_file(tmp_path / "x.gpkg").crs == UTM33


def test_16_bit_four_band_scene_with_nodata_and_aligned_preview(tmp_path, dataset_name):
    rng = np.random.default_rng(0)
    data = rng.integers(1000, 2000, (4, 40, 80), dtype=np.uint16)
    data[:, 8:24, 40:64] = 9000  # a bright field
    data[:, :, :10] = 0  # nodata strip on the left
    data[3] = 100  # band 4 dark
    _write_scene(tmp_path / "scenes" / "a" / "scene.tif", data, nodata=0)
    (tmp_path / "scenes" / "broken.tif").write_bytes(b"not a tiff")
    _write_scene(tmp_path / "scenes" / "grey.tif", data[:1], crs=None)

    report = import_geotiffs(tmp_path / "scenes", dataset_name, preview_size=40)
    assert report.added == 2
    ((bad, reason),) = report.skipped
    assert bad.endswith("broken.tif") and "not recognized as being in a supported" in reason
    dataset = fo.load_dataset(dataset_name)
    assert dataset.app_config.grid_media_field == "preview_path"
    assert dataset.app_config.modal_media_field == "preview_path"
    assert "preview_path" in dataset.app_config.media_fields

    scene = dataset.match(fo.ViewField("filepath").ends_with("scene.tif")).first()
    assert (scene.metadata.width, scene.metadata.height, scene.metadata.num_channels) == (
        80,
        40,
        4,
    )
    assert CRS.from_wkt(scene.crs) == CRS.from_user_input(UTM33)
    assert scene.transform == [2.0, 0.0, ORIGIN[0], 0.0, -2.0, ORIGIN[1]]
    assert scene.bands == [1, 2, 3] and scene.nodata == 0
    with FileRaster(scene.filepath) as raster:  # at full size, the preview is what
        assert (raster.overview(80) == to_rgb_uint8(scene.filepath)).all()  # models see
    assert scene.location.point[0] == pytest.approx(15.0011, abs=1e-3)
    preview = np.asarray(Image.open(scene.preview_path))
    assert preview.shape == (20, 40, 3)  # the whole extent at half size
    assert (preview[:, :5] == 0).all()  # nodata is black and does not set the stretch
    assert (preview[:, 5:].max(axis=-1) > 0).mean() > 0.95
    # a label on the bright field (relative box) lands on the bright preview pixels
    field = fo.Detection.from_mask(_rect((40, 80), 40, 8, 24, 16), label="field")
    x, y, w, h = field.bounding_box
    box = preview[round(y * 20) : round((y + h) * 20), round(x * 40) : round((x + w) * 40)]
    assert (box == 255).all() and (preview == 255).sum() == box.size

    grey = dataset.match(fo.ViewField("filepath").ends_with("grey.tif")).first()
    assert grey.crs is None and grey.transform is None and grey.bands == [1]

    again = import_geotiffs(tmp_path / "scenes", dataset_name, bands=[4, 3, 2])
    assert (again.added, again.existing) == (0, 2)
    other = f"{dataset_name}-bands"
    try:
        picked = import_geotiffs(tmp_path / "scenes", other, bands=[4, 3, 2])
        assert picked.added == 1
        assert any(
            p.endswith("grey.tif") and "bands=[4, 3, 2]" in r and "between 1 and 1" in r
            for p, r in picked.skipped
        )
        chosen = fo.load_dataset(other).first()
        assert chosen.bands == [4, 3, 2]
        # labelling reads the bands the preview shows
        image = sample_image(chosen)
        assert image == RasterFile(chosen.filepath, (4, 3, 2))
        rgb = to_rgb_uint8(image)
        assert (rgb[:, 10:, 0] == rgb[0, 10, 0]).all()  # band 4 is flat: red is one value
        assert not (rgb[:, 10:, 1] == rgb[0, 10, 1]).all()
        for foreign in (13, "4,3,2", [], ["red"]):  # a user's own field of that name
            assert sample_image(fo.Sample(filepath="/s.tif", bands=foreign)) == "/s.tif"
        stub = StubModel()
        compute_pseudo_labels(fo.load_dataset(other), "dp", classes=["field"], model=stub)
        assert stub.calls == [str(image)]
    finally:
        fo.delete_dataset(other)
    with pytest.raises(ValueError, match="one or three 1-based"):
        import_geotiffs(tmp_path / "scenes", dataset_name, bands=[1, 2])


def test_float_scene_with_nan_nodata(tmp_path, dataset_name):
    data = np.linspace(0, 50, 32 * 32, dtype=np.float32).reshape(1, 32, 32)
    data[0, :4] = np.nan
    _write_scene(tmp_path / "f.tif", data, nodata=float("nan"))
    assert import_geotiffs(tmp_path, dataset_name).added == 1
    preview = np.asarray(Image.open(fo.load_dataset(dataset_name).first().preview_path))
    assert preview.shape == (32, 32, 3) and (preview[:4] == 0).all()
    assert preview[4:].max() == 255 and preview[-1, -1, 0] == 255


def test_import_and_export_operators_from_sdk(tmp_path, dataset_name):
    data = np.full((3, 24, 32), 80, np.uint8)
    _write_scene(tmp_path / "scenes" / "s.tif", data)
    result = foo.get_operator(f"{PLUGIN}/import_geotiffs")(
        tmp_path / "scenes", dataset_name=dataset_name, bands="3, 2, 1", preview_size=64
    )
    assert result.result["added"] == 1
    dataset = fo.load_dataset(dataset_name)
    sample = dataset.first()
    assert sample.bands == [3, 2, 1]
    sample["pred"] = fo.Detections(
        detections=[fo.Detection.from_mask(_rect((24, 32), 4, 4, 5, 5), label="roof")]
    )
    sample.save()
    out = foo.get_operator(f"{PLUGIN}/export_geo")(dataset, "pred", tmp_path / "roofs.gpkg")
    assert out.result["features"] == 1
    assert gpd.read_file(tmp_path / "roofs.gpkg").area_m2.tolist() == [100.0]
