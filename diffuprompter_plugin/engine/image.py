"""Turns whatever a user passes as an image into an H x W x 3 uint8 RGB array."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputImageError

ImageLike = np.ndarray | Image.Image | str | os.PathLike

MIN_SIDE = 16
"""Smallest accepted image side in pixels (SD's VAE downsamples by 8)."""

STRETCH_PERCENTILES = (0.5, 99.5)
"""Percentiles mapped to 0 and 255 for 16-bit, integer and unbounded float data."""


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file into an array, keeping its dtype (16-bit included).

    Raises:
        InputImageError: the file is missing or not a readable image.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise InputImageError(f"Cannot read image '{os.fspath(path)}': {e}") from e


def to_rgb_uint8(image: ImageLike) -> np.ndarray:
    """Converts an image to a contiguous H x W x 3 uint8 RGB array.

    Accepted: 2-D grayscale, H x W x 1, RGB and RGBA (alpha is dropped);
    uint8 as is; bool is refused; other integer dtypes (16-bit remote-sensing
    data) and floats outside [0, 1] are stretched between the 0.5th and 99.5th
    percentile; floats within [0, 1] are scaled by 255.

    Raises:
        InputImageError: unsupported dtype, channel count or size.
    """
    if isinstance(image, (str, os.PathLike)):
        array = load_image(image)
    elif isinstance(image, Image.Image):
        array = np.asarray(image)
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise InputImageError(
            f"Unsupported image type {type(image).__name__}; "
            "pass a numpy array, a PIL image or a file path"
        )
    rgb = _to_three_channels(array)
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise InputImageError(
            f"Image of {width}x{height} px is too small; both sides must be at least {MIN_SIDE} px"
        )
    return np.require(_to_uint8(rgb), requirements=["C", "W"])  # writable: DenseCRF needs it


def _to_three_channels(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return array[:, :, :3]
    raise InputImageError(
        f"Unsupported image shape {array.shape}: expected H x W grayscale, "
        "H x W x 3 RGB or H x W x 4 RGBA (make an RGB composite first)"
    )


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise InputImageError(
            f"Unsupported image dtype {array.dtype}: use uint8, uint16, int or float"
        )
    data = array.astype(np.float64)
    if not np.isfinite(data).all():
        raise InputImageError("Image contains NaN or infinite values")
    if np.issubdtype(array.dtype, np.floating) and data.min() >= 0 and data.max() <= 1:
        return np.round(data * 255).astype(np.uint8)
    low, high = np.percentile(data, STRETCH_PERCENTILES)
    if high <= low:
        return np.zeros(array.shape, np.uint8)
    return np.round(np.clip((data - low) / (high - low), 0, 1) * 255).astype(np.uint8)
