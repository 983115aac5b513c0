"""Oriented boxes from instance masks: corners and angles of rotated
rectangles, the DOTA text format's round trip, export_geo's second layer."""

from __future__ import annotations

import math

import fiftyone as fo
import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from rasterio import Affine
from rasterio.features import rasterize
from test_geo import ORIGIN, UTM33, _rect, _scene_dataset

from diffuprompter_plugin.dota import export_dota, read_dota
from diffuprompter_plugin.engine.oriented_boxes import from_corners, oriented_box
from diffuprompter_plugin.geo import export_geo
from diffuprompter_plugin.oriented import detection_oriented_box


def rotated(cx: float, cy: float, length: float, width: float, degrees: float) -> np.ndarray:
    """The corners of a length x width rectangle centred at (cx, cy), its
    long side turned ``degrees`` from +x towards +y (image coordinates)."""
    t = math.radians(degrees)
    along, across = np.array([math.cos(t), math.sin(t)]), np.array([-math.sin(t), math.cos(t)])
    half = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    return np.array([(cx, cy) + a * along * length / 2 + b * across * width / 2 for a, b in half])


def rasterised(corners: np.ndarray, shape=(128, 128)) -> np.ndarray:
    """The pixels whose centres fall inside the polygon."""
    return rasterize([(shapely.Polygon(corners), 1)], out_shape=shape).astype(bool)


def test_an_axis_aligned_block_gives_its_pixel_edges():
    box = oriented_box(_rect((20, 30), 5, 3, 10, 4))
    np.testing.assert_array_equal(box.corners, [(5, 3), (15, 3), (15, 7), (5, 7)])
    assert (box.angle, box.length, box.width, box.center) == (0.0, 10.0, 4.0, (10.0, 5.0))
    upright = oriented_box(_rect((20, 30), 5, 3, 4, 10))
    assert (upright.angle, upright.length, upright.width) == (-90.0, 10.0, 4.0)
    single = oriented_box(_rect((5, 5), 2, 2, 1, 1))
    np.testing.assert_array_equal(single.corners, [(2, 2), (3, 2), (3, 3), (2, 3)])
    assert oriented_box(np.zeros((4, 4), bool)) is None


@pytest.mark.parametrize("degrees", [10.0, 30.0, 45.0, 60.0, 80.0, -25.0, -70.0])
def test_rotated_rectangles_give_their_corners_and_angle(degrees):
    truth = rotated(64.0, 60.0, 70.0, 24.0, degrees)
    box = oriented_box(rasterised(truth))
    assert box.angle == pytest.approx(degrees, abs=1.5)
    assert box.length == pytest.approx(70.0, abs=2.0) and box.width == pytest.approx(24, abs=2)
    assert box.center == pytest.approx((64.0, 60.0), abs=0.6)
    for corner in truth:  # every true corner has an estimate within 1.5 px
        assert np.hypot(*(box.corners - corner).T).min() <= 1.5
    top = box.corners[0]
    assert top[1] == box.corners[:, 1].min()  # starts at the top-most corner
    turns = np.cross(box.corners[1] - box.corners[0], box.corners[2] - box.corners[1])
    assert turns > 0  # clockwise on screen: a right turn with y pointing down


def test_two_parts_share_one_box():
    mask = _rect((40, 60), 2, 2, 4, 4) | _rect((40, 60), 50, 30, 4, 4)
    box = oriented_box(mask)
    outline = shapely.Polygon(box.corners).buffer(1e-4)
    assert all(outline.contains(shapely.Point(c)) for c in [(2, 2), (6, 6), (50, 30), (54, 34)])
    assert 0 < box.angle < 45 and box.length * box.width < 0.5 * 52 * 32  # not the bbox


def test_corners_in_any_order_give_the_same_box():
    truth = rotated(30, 20, 16, 6, 35)
    shuffled = from_corners(truth[[2, 0, 3, 1]])
    np.testing.assert_allclose(shuffled.corners, from_corners(truth).corners)
    assert shuffled.angle == pytest.approx(35.0)
    assert (shuffled.length, shuffled.width) == (pytest.approx(16), pytest.approx(6))


def _dataset_of_rotated_objects(tmp_path) -> fo.Dataset:
    """One 128 x 128 sample: two rotated rectangles from masks and a box
    without a mask; a second sample whose image shares the first's name."""
    dataset = fo.Dataset()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    masks = [("storage tank", rotated(40, 40, 50, 16, 30)), ("ship", rotated(90, 90, 40, 10, -60))]
    detections = [fo.Detection.from_mask(rasterised(c), label=n) for n, c in masks]
    detections.append(fo.Detection(label="ship", bounding_box=[0.5, 0.0, 0.25, 0.125]))
    for folder, labels in (("a", detections), ("b", [])):
        dataset.add_sample(
            fo.Sample(
                filepath=str(tmp_path / folder / "P0001.png"),
                metadata=fo.ImageMetadata(width=128, height=128),
                pred=fo.Detections(detections=labels),
            )
        )
    return dataset


def test_dota_files_round_trip(tmp_path):
    dataset = _dataset_of_rotated_objects(tmp_path)
    out = export_dota(dataset, "pred", tmp_path / "labelTxt")
    assert (out["files"], out["objects"]) == (2, 3)
    first, second = dataset.values("id")
    text = (tmp_path / "labelTxt" / f"P0001_{first}.txt").read_text()
    assert (tmp_path / "labelTxt" / f"P0001_{second}.txt").read_text() == ""
    lines = text.splitlines()
    assert [line.split()[8:] for line in lines] == [
        ["storage-tank", "0"],
        ["ship", "0"],
        ["ship", "0"],
    ]
    assert lines[2].split()[:8] == ["64.0", "0.0", "96.0", "0.0", "96.0", "16.0", "64.0", "16.0"]

    header = tmp_path / "with_header.txt"  # DOTA's own files start with two header lines
    header.write_text("imagesource:GoogleEarth\ngsd:0.146\n" + text)
    objects = read_dota(header)
    assert [o.label for o in objects] == ["storage-tank", "ship", "ship"]
    sample = dataset.first()
    for obj, det in zip(objects, sample.pred.detections, strict=True):
        expected = detection_oriented_box(det, 128, 128)
        np.testing.assert_allclose(obj.box.corners, expected.corners, atol=0.05)
        assert obj.box.angle == pytest.approx(expected.angle, abs=0.1)
        assert obj.difficult == 0
    assert objects[0].box.angle == pytest.approx(30.0, abs=1.5)
    assert objects[1].box.angle == pytest.approx(-60.0, abs=1.5)


def test_dota_refuses_what_it_cannot_write_and_leaves_nothing(tmp_path):
    dataset = _dataset_of_rotated_objects(tmp_path)
    dataset.first().metadata = None  # not saved: only this sample loses it
    sample = dataset.last()
    sample.metadata = None
    sample.save()
    with pytest.raises(ValueError, match="P0001.png' has no metadata"):
        export_dota(dataset, "pred", tmp_path / "labels")
    assert not (tmp_path / "labels").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".dota-")] == []
    with pytest.raises(ValueError, match="Field 'missing' does not exist"):
        export_dota(dataset, "missing", tmp_path / "labels")
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3 4 5 6 seven 8 ship 0\n")
    with pytest.raises(ValueError, match="bad.txt, line 1: corners must be numbers"):
        read_dota(bad)


def test_export_geo_writes_oriented_boxes_as_a_second_layer(tmp_path):
    corners = rotated(30, 20, 30, 8, 20)
    dataset = _scene_dataset(tmp_path, [("ship", rasterised(corners, (40, 60)), 0.9)])
    out = export_geo(dataset, "pred", tmp_path / "ships.gpkg", oriented_boxes=True)
    assert out["oriented_layer"] == "pred_oriented"
    layers = dict(pyogrio.list_layers(tmp_path / "ships.gpkg"))
    assert layers == {"pred": "MultiPolygon", "pred_oriented": "Polygon"}
    boxes = gpd.read_file(tmp_path / "ships.gpkg", layer="pred_oriented")
    masks = gpd.read_file(tmp_path / "ships.gpkg", layer="pred")
    assert boxes.crs == UTM33 and list(boxes.detection_id) == list(masks.detection_id)
    (row,) = boxes.itertuples()
    assert (row.label, row.score) == ("ship", 0.9)
    assert row.angle == pytest.approx(20.0, abs=1.5) and row.length_px == pytest.approx(30, abs=2)
    transform = Affine(2.0, 0, ORIGIN[0], 0, -2.0, ORIGIN[1])  # _scene_dataset's, 2 m pixels
    box = detection_oriented_box(dataset.first().pred.detections[0], 60, 40)
    expected = shapely.Polygon([transform * tuple(c) for c in box.corners])
    assert row.geometry.equals_exact(shapely.orient_polygons(expected), 1e-6)
    assert row.geometry.area == pytest.approx(box.length * box.width * 4.0)
    assert row.geometry.buffer(1e-3).contains(masks.geometry[0])  # the mask lies inside
    with pytest.raises(ValueError, match="GeoJSON holds one layer"):
        export_geo(dataset, "pred", tmp_path / "ships.geojson", oriented_boxes=True)


def test_an_empty_view_writes_empty_layers(tmp_path):
    dataset = _scene_dataset(tmp_path, [("ship", _rect((40, 60), 2, 2, 4, 4), 0.9)])
    out = export_geo(
        dataset.limit(0), "pred", tmp_path / "none.gpkg", crs=UTM33, oriented_boxes=True
    )
    assert out["features"] == 0
    boxes = gpd.read_file(tmp_path / "none.gpkg", layer="pred_oriented")
    assert len(boxes) == 0 and "angle" in boxes.columns
