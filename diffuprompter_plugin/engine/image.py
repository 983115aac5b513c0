"""Turns whatever a user passes as an image into an H x W x 3 uint8 RGB array."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image

from .errors import InputImageError
from .raster import ArrayRaster, Raster, RasterFile, open_raster

ImageLike = np.ndarray | Image.Image | str | os.PathLike | RasterFile | Raster

MIN_SIDE = 16
"""Smallest accepted image side in pixels (SD's VAE downsamples by 8)."""


def as_raster(image: ImageLike) -> Raster:
    """The :class:`Raster` of an image: a file (a path, or a
    :class:`~diffuprompter_plugin.engine.raster.RasterFile` naming its bands)
    is opened, not read (see :func:`open_raster`); an array or PIL image is
    converted once.

    Raises:
        InputImageError: unsupported type, dtype, channel count or size.
    """
    if isinstance(image, Raster):
        raster = image
    elif isinstance(image, (str, os.PathLike)):
        raster = open_raster(image)
    elif isinstance(image, RasterFile):
        raster = open_raster(image.path, image.bands)
    elif isinstance(image, Image.Image):
        raster = ArrayRaster(np.asarray(image))
    elif isinstance(image, np.ndarray):
        raster = ArrayRaster(image)
    else:
        raise InputImageError(
            f"Unsupported image type {type(image).__name__}; "
            "pass a numpy array, a PIL image, a file path or a RasterFile"
        )
    if min(raster.height, raster.width) < MIN_SIDE:
        raster.close()
        raise InputImageError(
            f"Image of {raster.width}x{raster.height} px is too small; "
            f"both sides must be at least {MIN_SIDE} px"
        )
    return raster


@contextmanager
def opened(image: ImageLike) -> Iterator[Raster]:
    """:func:`as_raster`, closed at exit unless the caller passed a Raster."""
    raster = as_raster(image)
    try:
        yield raster
    finally:
        if raster is not image:
            raster.close()


def to_rgb_uint8(image: ImageLike) -> np.ndarray:
    """Converts a whole image to a contiguous, writable H x W x 3 uint8 RGB array.

    Accepted: 2-D grayscale, H x W x 1, RGB and RGBA (alpha is dropped),
    files of any band count and bit depth (see
    :class:`~diffuprompter_plugin.engine.raster.FileRaster`); uint8 as is;
    bool is refused; other integer dtypes (16-bit remote-sensing data) and
    floats outside [0, 1] are stretched between the 0.5th and 99.5th
    percentile; floats within [0, 1] are scaled by 255. Nodata pixels of a
    file read as black here; :class:`~diffuprompter_plugin.engine.raster.Raster`
    gives their mask.

    Raises:
        InputImageError: unsupported dtype, channel count or size.
    """
    return read_rgb(image)[0]


def read_rgb(image: ImageLike) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`to_rgb_uint8` and the H x W bool mask of pixels with data
    (None when every pixel has data; see
    :meth:`~diffuprompter_plugin.engine.raster.Raster.read`)."""
    with opened(image) as raster:
        rgb, valid = raster.read()
    return np.require(rgb, requirements=["C", "W"]), valid  # writable: DenseCRF needs it
