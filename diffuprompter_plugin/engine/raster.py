"""Reads images of any size, band count and bit depth window by window.

A :class:`Raster` turns any window of an image into the H x W x 3 uint8 RGB
array the models take, plus a mask of its valid (not nodata) pixels:

- :class:`ArrayRaster` holds an array already in memory, converted as a whole.
- :class:`FileRaster` reads a file with rasterio (GDAL): every band count and
  bit depth at full precision (16-bit RGB PNG, 16-bit multi-band and float
  TIFF), RGB or chosen bands, window by window, so a scene never has to fit
  in memory and PIL's decompression-bomb limit never applies. Its stretch is
  computed once per scene from a decimated read (served from the overviews
  when the file has them), so every window of a scene shares one stretch.

:func:`open_raster` picks one: JPEGs and single-band or palette images up to
:data:`PIL_MAX_PIXELS` are read whole by PIL, as before (GDAL's JPEG decoder
does not give PIL's pixels); everything else goes through rasterio.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputImageError, gdal_message
from .remote import gdal_messages, gdal_path, is_remote, read_error, remote_env

Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1) in pixels; x1 and y1 are exclusive (x1 - x0 is the width)."""

STRETCH_PERCENTILES = (0.5, 99.5)
"""Percentiles mapped to 0 and 255 for 16-bit, integer and unbounded float data."""

STRETCH_SIDE = 2048
"""Longest side of the decimated read a scene's stretch is computed from;
images up to this size are stretched from all their pixels."""

PIL_MODES = ("1", "L", "P", "I;16", "I;16B", "I;16L")
"""Single-band and palette modes, which PIL reads at full precision. PIL
reads 16-bit RGB and multi-band files as their high byte, so those go to
rasterio."""

PIL_MAX_PIXELS = 4096 * 4096
"""Larger images are read by rasterio window by window, never whole."""


def has_data(valid: np.ndarray | None) -> bool:
    """Whether a window whose data mask (see :meth:`Raster.read`) is
    ``valid`` has any pixel with data."""
    return valid is None or bool(valid.any())


class Raster:
    """An image read window by window.

    Attributes:
        height, width: size in pixels.
        name: what error messages call it (a file path or ``"array"``).
    """

    height: int
    width: int
    name: str

    def read(self, box: Box | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The window ``box`` (default: all) as ``(rgb, valid)``: h x w x 3
        uint8 RGB, and an h x w bool mask of pixels with data (None when every
        pixel has data)."""
        raise NotImplementedError

    @property
    def georef(self) -> dict | None:
        """The file's ``{"transform": Affine, "crs": CRS}``, None when it has none."""
        return None

    def close(self) -> None:
        """Releases the file, if any."""

    def __enter__(self) -> Raster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArrayRaster(Raster):
    """An in-memory image, converted to RGB uint8 once (see :func:`to_rgb`).

    Args:
        array: H x W, H x W x 1, H x W x 3 or H x W x 4 (alpha dropped).
        name: what error messages call it.
    """

    def __init__(self, array: np.ndarray, name: str = "array") -> None:
        self.rgb = to_rgb(array, name)
        self.height, self.width = self.rgb.shape[:2]
        self.name = name

    def read(self, box: Box | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        if box is None:
            return self.rgb, None
        x0, y0, x1, y1 = box
        return np.ascontiguousarray(self.rgb[y0:y1, x0:x1]), None


@dataclass(frozen=True)
class RasterFile:
    """An image file and the bands to read from it: an image the engine
    opens with :class:`FileRaster` when it needs it (it pickles as a path).

    Attributes:
        path: the file.
        bands: 1-based band indices to use as R, G, B (one gives grayscale);
            None for :class:`FileRaster`'s default.
    """

    path: str
    bands: tuple[int, ...] | None = None


class FileRaster(Raster):
    """A file read by rasterio, window by window.

    Args:
        path: any file GDAL reads (GeoTIFF, COG, PNG, JPEG, ...).
        bands: 1-based band indices to use as R, G, B (one index gives
            grayscale); default the bands tagged red, green and blue, else
            bands 1, 2, 3, else band 1.

    Nodata: pixels that are nodata (the file's nodata value or mask) in any
    chosen band, or not finite, are invalid. The stretch ignores them.

    Raises:
        InputImageError: the file cannot be read or ``bands`` do not exist.
    """

    def __init__(self, path: str | os.PathLike, bands: Sequence[int] | None = None) -> None:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        self.name = os.fspath(path)
        self.remote = is_remote(self.name)
        try:
            with warnings.catch_warnings(), self._env(), gdal_messages() as messages:
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.dataset = rasterio.open(gdal_path(self.name))
        except RasterioIOError as e:
            if self.remote:
                raise read_error(self.name, "the header", e, messages) from e
            raise InputImageError(f"Cannot read image '{self.name}': {gdal_message(e)}") from e
        self.height, self.width = self.dataset.height, self.dataset.width
        try:
            self.bands = self._choose_bands(bands)
            self.lut = self._palette()
            self.low, self.high, self.scale = self._stretch()
        except BaseException:
            self.dataset.close()
            raise

    def read(self, box: Box | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        from rasterio.windows import Window

        x0, y0, x1, y1 = box or (0, 0, self.width, self.height)
        window = Window(x0, y0, x1 - x0, y1 - y0)
        data, valid = self._read(window=window)
        return self._to_uint8(data), valid

    @property
    def georef(self) -> dict | None:
        """As :attr:`Raster.georef`; a file georeferenced by ground control
        points alone gets the affine transform fitted to them
        (:func:`gcp_georef`)."""
        if self.dataset.crs is None and self.dataset.transform.is_identity:
            return gcp_georef(self.dataset)[0]
        return {"transform": self.dataset.transform, "crs": self.dataset.crs}

    def close(self) -> None:
        self.dataset.close()

    def _choose_bands(self, bands: Sequence[int] | None) -> list[int]:
        from rasterio.enums import ColorInterp

        count = self.dataset.count
        if bands is not None:
            bands = [int(b) for b in bands]
            if len(bands) not in (1, 3) or not all(1 <= b <= count for b in bands):
                raise InputImageError(
                    f"bands={bands} for '{self.name}': give 1 or 3 band indices "
                    f"between 1 and {count}"
                )
            return bands * 3 if len(bands) == 1 else bands
        interp = list(self.dataset.colorinterp)
        rgb = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        if all(c in interp for c in rgb):
            return [interp.index(c) + 1 for c in rgb]
        return [1, 2, 3] if count >= 3 else [1, 1, 1]

    def _palette(self) -> np.ndarray | None:
        """The 256 x 3 RGB lookup of a palette image, else None."""
        from rasterio.enums import ColorInterp

        if self.dataset.colorinterp[self.bands[0] - 1] != ColorInterp.palette:
            return None
        colormap = self.dataset.colormap(self.bands[0])
        lut = np.zeros((256, 3), np.uint8)
        for index, color in colormap.items():
            lut[index] = color[:3]
        return lut

    def _env(self) -> AbstractContextManager:
        """GDAL's settings for remote reads (:func:`.remote.remote_env`)."""
        return remote_env() if self.remote else nullcontext()

    def _read(self, **kwargs) -> tuple[np.ndarray, np.ndarray | None]:
        """Chosen bands as h x w x 3 in the file's dtype, and the valid mask.

        Raises:
            InputImageError: GDAL cannot read the pixels (a truncated or
                corrupt file), naming the file and carrying GDAL's message;
                for a remote file, :class:`~.remote.RemoteReadError` naming
                the URL, the window and GDAL's HTTP status.
        """
        from rasterio.errors import RasterioError

        with self._env(), gdal_messages() as messages:
            try:
                return self._read_bands(**kwargs)
            except RasterioError as e:
                if self.remote:
                    raise read_error(self.name, _what(kwargs.get("window")), e, messages) from e
                raise InputImageError(f"Cannot read image '{self.name}': {gdal_message(e)}") from e

    def _read_bands(self, **kwargs) -> tuple[np.ndarray, np.ndarray | None]:
        """Chosen bands as h x w x 3 in the file's dtype, and the valid mask."""
        unique = sorted(set(self.bands))
        stack = self.dataset.read(unique, **kwargs)
        valid = None
        if any(self.dataset.nodatavals[b - 1] is not None for b in unique) or any(
            "per_dataset" in {f.name for f in self.dataset.mask_flag_enums[b - 1]}
            and "alpha" not in {f.name for f in self.dataset.mask_flag_enums[b - 1]}
            for b in unique
        ):
            valid = self.dataset.read_masks(unique, **kwargs).all(axis=0)
        data = np.stack([stack[unique.index(b)] for b in self.bands], axis=-1)
        if np.issubdtype(data.dtype, np.floating):
            finite = np.isfinite(data).all(axis=-1)
            if not finite.all():
                valid = finite if valid is None else valid & finite
        return data, valid

    def overview(self, side: int) -> np.ndarray:
        """The whole image as an h x w x 3 uint8 RGB array whose longest side
        is at most ``side``: pixels averaged (served from the file's
        overviews when it has them), then converted as every window is, so a
        preview shows what the models see; nodata pixels are black."""
        from rasterio.enums import Resampling

        resampling = Resampling.nearest if self.lut is not None else Resampling.average
        data, valid = self._decimated(side, resampling=resampling)
        rgb = np.array(self._to_uint8(data))
        if valid is not None:
            rgb[~valid] = 0
        return rgb

    def _decimated(self, side: int, **kwargs) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`_read` of the whole extent, its longest side at most ``side``."""
        shape = decimated_shape(self.height, self.width, side)
        return self._read(out_shape=(len(set(self.bands)), *shape), **kwargs)

    def _stretch(self) -> tuple[float, float, float]:
        """(low, high, scale) of the scene from a decimated read: ``uint8``
        and palettes are kept (scale 1, no stretch), floats within [0, 1]
        are scaled by 255, other data is stretched between its percentiles."""
        dtype = np.dtype(self.dataset.dtypes[self.bands[0] - 1])
        if dtype == np.uint8:
            return 0.0, 255.0, 1.0
        if dtype.kind not in "iuf":
            raise InputImageError(f"Unsupported data type {dtype} in '{self.name}'")
        data, valid = self._decimated(STRETCH_SIDE)
        values = data[valid] if valid is not None else data.reshape(-1, 3)
        if values.size == 0:
            return 0.0, 1.0, 0.0
        if dtype.kind == "f" and values.min() >= 0 and values.max() <= 1:
            return 0.0, 1.0, 255.0
        low, high = np.percentile(values.astype(np.float64), STRETCH_PERCENTILES)
        return float(low), float(high), 0.0

    def _to_uint8(self, data: np.ndarray) -> np.ndarray:
        if self.lut is not None:
            return self.lut[data[..., 0]]
        if self.scale == 1.0:
            return np.ascontiguousarray(data)
        data = np.nan_to_num(data.astype(np.float64))
        if self.scale == 255.0:
            return np.round(np.clip(data, 0, 1) * 255).astype(np.uint8)
        return stretch(data, self.low, self.high)


def decimated_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """(h, w) of a decimated read of a ``height`` x ``width`` image: aspect
    kept, the longest side at most ``side`` (never enlarged), each side >= 1."""
    factor = max(1.0, max(height, width) / side)
    return max(1, round(height / factor)), max(1, round(width / factor))


GCP_TOLERANCE_PX = 0.25
"""Largest distance, in pixels, between a ground control point and where the
affine transform fitted to all of them puts it (GDAL's own tolerance for
``GDALGCPsToGeoTransform``)."""


def gcp_georef(dataset: Any) -> tuple[dict | None, str | None]:
    """The georeferencing of a rasterio dataset that has no geotransform:
    ``({"transform": Affine, "crs": CRS}, None)`` fitted (least squares) to
    its ground control points, or ``(None, why not)``: no GCPs, GCPs without
    a CRS, fewer than 3, or GCPs that no affine transform fits within
    :data:`GCP_TOLERANCE_PX` (a scene that needs warping)."""
    from rasterio.transform import from_gcps

    gcps, crs = dataset.gcps
    fix = "georeference it (e.g. QGIS's Georeferencer, or gdalwarp) and import the result"
    if not gcps:
        return None, f"the file has no CRS, geotransform or ground control points: {fix}"
    if crs is None:
        return None, f"its {len(gcps)} ground control points have no CRS: {fix}"
    if len(gcps) < 3:
        return None, (
            f"it has {len(gcps)} ground control point(s); an affine transform needs at "
            f"least 3: {fix}"
        )
    transform = from_gcps(gcps)
    if transform.is_degenerate:
        return None, f"its {len(gcps)} ground control points are collinear: {fix}"
    back = [~transform * (g.x, g.y) for g in gcps]
    error = max(np.hypot(c - g.col, r - g.row) for (c, r), g in zip(back, gcps, strict=True))
    if error > GCP_TOLERANCE_PX:
        return None, (
            f"no affine transform fits its {len(gcps)} ground control points (the best "
            f"is off by up to {error:.2f} px, more than {GCP_TOLERANCE_PX} px): warp it "
            "with gdalwarp (e.g. gdalwarp -r bilinear in.tif out.tif) and import the result"
        )
    return {"transform": transform, "crs": crs}, None


def _what(window) -> str:
    """A window's description in an error message."""
    if window is None:
        return "the overview"
    x0, y0 = int(window.col_off), int(window.row_off)
    return f"window x {x0}-{x0 + int(window.width)}, y {y0}-{y0 + int(window.height)}"


def stretch(data: np.ndarray, low: float, high: float) -> np.ndarray:
    """Maps ``low``..``high`` linearly to 0..255 (clipped); all zero when
    ``high <= low``."""
    if high <= low:
        return np.zeros(data.shape, np.uint8)
    return np.round(np.clip((data - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def open_raster(path: str | os.PathLike, bands: Sequence[int] | None = None) -> Raster:
    """The :class:`Raster` of an image file: PIL for JPEGs and single-band or
    palette images up to :data:`PIL_MAX_PIXELS` (their pixels exactly as
    before), rasterio for everything else, remote scenes (``https://``,
    ``s3://``: see :mod:`.remote`) included.

    Raises:
        InputImageError: the file is missing or not a readable image.
    """
    name = os.fspath(path)
    if is_remote(name):
        return FileRaster(name, bands)
    if bands is None:
        try:
            with Image.open(name) as img:
                small = img.width * img.height <= PIL_MAX_PIXELS
                if small and (img.format == "JPEG" or img.mode in PIL_MODES):
                    img.load()
                    array = np.asarray(img.convert("RGB") if img.mode == "P" else img)
                    return ArrayRaster(array, name)
        except Image.DecompressionBombError:
            pass  # too many pixels for PIL: rasterio reads it window by window
        except (OSError, UnidentifiedImageError, ValueError):
            pass  # e.g. a float TIFF: rasterio reads it
    if not os.path.isfile(name):
        raise InputImageError(f"Cannot read image '{name}': no such file")
    return FileRaster(name, bands)


def to_rgb(array: np.ndarray, name: str = "array") -> np.ndarray:
    """Converts a whole array to a contiguous, writable H x W x 3 uint8 RGB
    array: uint8 as is, floats within [0, 1] times 255, other integer and
    float data stretched between its percentiles; bool is refused.

    Raises:
        InputImageError: unsupported dtype or channel count, NaN values.
    """
    rgb = _three_channels(array, name)
    return np.require(_to_uint8(rgb, name), requirements=["C", "W"])  # DenseCRF writes


def _three_channels(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return array[:, :, :3]
    raise InputImageError(
        f"Unsupported image shape {array.shape} of {name}: expected H x W grayscale, "
        "H x W x 3 RGB or H x W x 4 RGBA (make an RGB composite first, or pass "
        "the file with chosen bands)"
    )


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise InputImageError(
            f"Unsupported image dtype {array.dtype} of {name}: use uint8, uint16, int or float"
        )
    data = array.astype(np.float64)
    if not np.isfinite(data).all():
        raise InputImageError(f"Image {name} contains NaN or infinite values")
    if np.issubdtype(array.dtype, np.floating) and data.min() >= 0 and data.max() <= 1:
        return np.round(data * 255).astype(np.uint8)
    return stretch(data, *np.percentile(data, STRETCH_PERCENTILES))
