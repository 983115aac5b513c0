"""Nodata and non-finite pixels are never labelled, on any path: whole
images, tiles, re-thresholding (issue 22 item 5)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from helpers import TINY_CONFIG
from rasterio.transform import from_origin
from test_tiling import TILED, stub_model

WHOLE = TILED.replace(tile_size=256)  # a 64-px image is labelled whole


def _write(path, data, nodata=None):
    bands, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=bands, dtype=data.dtype)
    transform = from_origin(500_000, 5_000_000, 1.0, 1.0)
    with rasterio.open(
        path, "w", crs="EPSG:32633", transform=transform, nodata=nodata, **profile
    ) as dst:
        dst.write(data)
    return path


def _pixels(result, shape):
    covered = np.zeros(shape, int)
    for inst in result.instances:
        covered += inst.full_mask(shape)
    return covered


def _half_nodata(tmp_path):
    """64 x 64 uint16: the left half nodata (65535, which the stub grounder
    finds brightest), a bright object straddling the edge of the data."""
    data = np.random.default_rng(0).integers(200, 400, (3, 64, 64)).astype(np.uint16)
    data[:, :, :32] = 65535
    data[0, 20:40, 24:48] = 3000
    return _write(tmp_path / "half.tif", data, nodata=65535)


def test_whole_image_instances_never_cover_nodata(tmp_path):
    path = _half_nodata(tmp_path)
    model = stub_model(WHOLE)
    result = model.annotate(path, ["car"])
    assert result.heatmap_files == {}  # the whole-image path
    covered = _pixels(result, (64, 64))
    assert covered[:, :32].sum() == 0  # none on nodata
    assert covered[20:40, 32:48].all() and covered.sum() == 20 * 16  # the object's data part
    assert (result.heatmaps["car"][:, :32] == 0).all()  # stored heatmaps are 0 on nodata
    # re-thresholding from a heatmap that is high on nodata keeps the rule
    hot = np.ones((64, 64), np.float32)
    assert _pixels_of(model.sam_prompter.segment(path, {"car": hot}), (64, 64))[:, :32].sum() == 0


def _pixels_of(instances, shape):
    return sum((i.full_mask(shape).astype(int) for i in instances), np.zeros(shape, int))


def test_non_finite_float_pixels_are_never_labelled(tmp_path):
    data = np.random.default_rng(1).normal(10, 1, (1, 64, 64))
    data[0, 24:48, 20:56] = 30  # an object, partly on inf
    data[0, :, 40:] = np.inf  # brightest for the stub grounder
    data[0, :16] = np.nan
    path = _write(tmp_path / "float.tif", data)
    result = stub_model(WHOLE).annotate(path, ["car"])
    covered = _pixels(result, (64, 64))
    assert covered.sum() > 0 and covered[:, 40:].sum() == 0 and covered[:16].sum() == 0
    assert covered[24:48, 20:40].all()


def test_an_all_nodata_image_gets_no_instance_and_is_not_run(tmp_path):
    path = _write(tmp_path / "empty.tif", np.full((3, 64, 64), 65535, np.uint16), nodata=65535)
    model = stub_model(WHOLE)
    result = model.annotate(path, ["car", "ship"])
    assert result.instances == [] and model.grounder.tiles == 0
    assert all((h == 0).all() and h.shape == (64, 64) for h in result.heatmaps.values())


def test_tiny_models_label_no_nodata_pixel(tiny_diffuprompter, tmp_path):
    path = _half_nodata(tmp_path)
    model = tiny_diffuprompter
    saved = model.config
    model.config = TINY_CONFIG.replace(threshold=0.05, min_area=1)
    try:
        result = model.annotate(path, ["car", "ship"])
        empty = _write(tmp_path / "e.tif", np.full((3, 64, 64), 65535, np.uint16), nodata=65535)
        assert model.annotate(empty, ["car"]).instances == []
    finally:
        model.config = saved
    assert _pixels(result, (64, 64))[:, :32].sum() == 0


def test_heatmap_is_the_map_annotate_thresholds_and_refuses_a_tiled_scene(tmp_path):
    path = _half_nodata(tmp_path)
    model = stub_model(WHOLE)
    heat = model.heatmap(path, "car")
    np.testing.assert_array_equal(heat, model.annotate(path, ["car"]).heatmaps["car"])
    assert (heat[:, :32] == 0).all() and heat[:, 32:].max() > 0  # 0 on nodata only
    big = _write(tmp_path / "big.tif", np.full((3, 80, 96), 300, np.uint16))
    with pytest.raises(ValueError, match=r"big.tif' \(96 x 80 px\) is labelled in tiles of 64"):
        stub_model(TILED).heatmap(big, "car")
