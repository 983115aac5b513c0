"""Input images: conversions and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffuprompter_plugin.engine.errors import InputImageError
from diffuprompter_plugin.engine.image import to_rgb_uint8


def test_grayscale_rgba_and_single_channel_become_rgb():
    gray = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    out = to_rgb_uint8(gray)
    assert out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out[..., 1], gray)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 10, 255
    assert to_rgb_uint8(rgba)[0, 0].tolist() == [10, 0, 0]
    assert to_rgb_uint8(gray[..., None]).shape == (32, 32, 3)


def test_16bit_is_stretched_between_percentiles():
    data = np.linspace(1000, 3000, 40 * 40).reshape(40, 40).astype(np.uint16)
    out = to_rgb_uint8(data)
    assert out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[..., 0].ravel().astype(int)) >= 0)  # order kept


def test_unit_floats_scale_by_255():
    out = to_rgb_uint8(np.full((16, 16, 3), 0.5, np.float64))
    assert out[0, 0].tolist() == [128, 128, 128]


def test_reads_files_including_16bit_tiff(tmp_path):
    path = tmp_path / "scene.tif"
    Image.fromarray(np.full((24, 40), 40000, np.uint16)).save(path)
    assert to_rgb_uint8(path).shape == (24, 40, 3)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((1, 1, 3), np.uint8), "1x1 px is too small"),
        (np.zeros((32, 32, 5), np.uint8), r"shape \(32, 32, 5\)"),
        (np.zeros((32, 32, 3), bool), "dtype bool"),
        (np.zeros((32, 32, 3), np.complex64), "dtype complex64"),
        (np.full((32, 32), np.nan, np.float32), "NaN"),
        ([[1, 2]], "Unsupported image type list"),
    ],
)
def test_bad_input_gets_a_clear_error(image, message):
    with pytest.raises(InputImageError, match=message):
        to_rgb_uint8(image)


def test_corrupt_file_error_names_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png")
    with pytest.raises(InputImageError, match="broken.png"):
        to_rgb_uint8(path)
    with pytest.raises(InputImageError, match="missing.jpg"):
        to_rgb_uint8(tmp_path / "missing.jpg")


def _twelve_bit() -> np.ndarray:
    """40 x 50 x 3 12-bit data: the usual satellite product."""
    return np.random.default_rng(0).integers(0, 4096, (40, 50, 3)).astype(np.uint16)


def _stretched(data: np.ndarray) -> np.ndarray:
    low, high = np.percentile(data.astype(np.float64), (0.5, 99.5))
    return np.round(np.clip((data - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def test_16bit_rgb_png_is_read_at_full_precision(tmp_path):
    import cv2

    data = _twelve_bit()
    cv2.imwrite(str(tmp_path / "scene.png"), data[..., ::-1])  # cv2 writes BGR
    np.testing.assert_array_equal(to_rgb_uint8(tmp_path / "scene.png"), _stretched(data))


def test_16bit_multiband_and_float_tiffs_are_read_at_full_precision(tmp_path):
    import tifffile

    data = _twelve_bit()
    tifffile.imwrite(tmp_path / "four.tif", np.dstack([data, data[..., :1]]))
    tifffile.imwrite(tmp_path / "float.tif", data.astype(np.float32) / 7, photometric="rgb")
    np.testing.assert_array_equal(to_rgb_uint8(tmp_path / "four.tif"), _stretched(data))
    np.testing.assert_array_equal(to_rgb_uint8(tmp_path / "float.tif"), _stretched(data / 7))


def test_chosen_bands_and_nodata_of_a_geotiff(tmp_path):
    import rasterio

    from diffuprompter_plugin.engine.raster import FileRaster

    data = np.stack([np.full((20, 30), v, np.uint16) for v in (100, 200, 300, 400)])
    data[:, :, 20:] = 0
    data[3, :10] = 800
    profile = dict(driver="GTiff", width=30, height=20, count=4, dtype="uint16", nodata=0)
    with rasterio.open(tmp_path / "s.tif", "w", **profile) as dst:
        dst.write(data)
    with FileRaster(tmp_path / "s.tif", bands=[4, 3, 2]) as raster:
        rgb, valid = raster.read((10, 5, 30, 15))
    assert rgb.shape == (10, 20, 3) and valid.shape == (10, 20)
    assert valid[:, :10].all() and not valid[:, 10:].any()
    assert rgb[0, 0, 0] > rgb[0, 0, 1] > rgb[0, 0, 2]  # band 4 brightest
    with pytest.raises(InputImageError, match=r"bands=\[5\]"):
        FileRaster(tmp_path / "s.tif", bands=[5])


def test_an_image_over_pils_pixel_limit_is_read_not_refused(tmp_path, monkeypatch):
    data = np.random.default_rng(0).integers(0, 255, (64, 80, 3)).astype(np.uint8)
    Image.fromarray(data).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 80 is a "bomb" now
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "huge.png")
    np.testing.assert_array_equal(to_rgb_uint8(tmp_path / "huge.png"), data)
