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
