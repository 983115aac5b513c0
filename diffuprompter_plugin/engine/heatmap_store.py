"""Full-resolution heatmaps of a large scene, on disk, window by window.

One single-band uint16 GeoTIFF per class (value = heatmap x
:data:`HEATMAP_SCALE`), tiled in 512-px deflate blocks with average
overviews, and georeferenced like the scene when it is. The tiling writes
each tile's core into it and reads it back window by window, so a scene's
heatmaps never have to fit in memory; re-thresholding reads the same files,
so it gives exactly what the run gave. QGIS opens them over the scene.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Container, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from .errors import gdal_message
from .raster import Box, decimated_shape

HEATMAP_SCALE = 65535
"""Stored value of heatmap 1.0: a step of 1.5e-5, enough to re-threshold."""

BLOCK = 512
"""Side of the GeoTIFF's internal tiles."""

CLASSIC_TIFF_BYTES = 2**32
"""Classic TIFF's file size limit (32-bit offsets); BigTIFF has none."""


def needs_bigtiff(height: int, width: int, itemsize: int = 2) -> bool:
    """Whether a heatmap GeoTIFF of ``height`` x ``width`` pixels of
    ``itemsize`` bytes is written as BigTIFF: when its pixels uncompressed,
    with the overviews (a third more at most), come within 5 % (headers,
    tile indexes, deflate's worst case) of classic TIFF's 4 GiB. Deflate's
    gain cannot be counted on: a noisy heatmap hardly compresses, and
    classic TIFF fails only when the limit is reached, late in a long run."""
    return height * width * itemsize * 4 / 3 >= 0.95 * CLASSIC_TIFF_BYTES


def quantize_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """A float heatmap (any shape) as stored: clipped to [0, 1], times
    :data:`HEATMAP_SCALE`, rounded to uint16 (a run's PNGs and GeoTIFFs alike)."""
    return np.round(np.clip(heatmap, 0, 1) * HEATMAP_SCALE).astype(np.uint16)


def dequantize_heatmap(data: np.ndarray) -> np.ndarray:
    """The float32 [0, 1] heatmap of stored values (the inverse of
    :func:`quantize_heatmap`, to within half a step)."""
    return (data.astype(np.float32) / HEATMAP_SCALE).clip(0, 1)


def stored_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """A float heatmap as reading it back from a heatmap file gives it
    (quantized, then dequantized)."""
    return dequantize_heatmap(quantize_heatmap(heatmap))


@contextmanager
def _quiet() -> Iterator[None]:
    """Silences rasterio's warning about heatmaps of images without georeference."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


SCRATCH_COMPRESSION = {"compress": "zstd", "zstd_level": 1, "predictor": 2}
"""Compression of heatmaps written only to be read back by the run (a
scene's unscaled heatmaps between its passes): several times faster than
deflate, which the kept files use since every GIS reads it."""


def heatmap_profile(
    height: int, width: int, georef: Mapping[str, Any] | None = None, scratch: bool = False
) -> dict:
    """The rasterio profile of a scene heatmap (``georef``: the scene's
    ``transform`` and ``crs``, if any); with ``scratch``, that of a file
    the run reads back and deletes (:data:`SCRATCH_COMPRESSION`)."""
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": 1,
        "dtype": "uint16",
        "compress": "deflate",
        "num_threads": "all_cpus",  # blocks compressed in GDAL's threads
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "BIGTIFF": "YES" if needs_bigtiff(height, width) else "NO",
    }
    if georef:
        profile.update({k: v for k, v in georef.items() if v is not None})
    if scratch:
        profile.update(SCRATCH_COMPRESSION)
    return profile


class HeatmapWriter:
    """Writes the heatmaps of one scene, window by window.

    Args:
        paths: ``{class name: .tif path}``.
        shape: the scene's (H, W).
        georef: the scene's ``transform`` and ``crs`` (or None).
        scratch: files the run reads back and deletes (see
            :func:`heatmap_profile`).
    """

    def __init__(
        self,
        paths: Mapping[str, str],
        shape: tuple[int, int],
        georef: Mapping[str, Any] | None = None,
        scratch: bool = False,
    ) -> None:
        import rasterio

        self.paths = dict(paths)
        profile = heatmap_profile(*shape, georef, scratch)
        self.files = {}
        try:
            for name, path in self.paths.items():
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                with _quiet(), _gdal_errors(path):
                    self.files[name] = rasterio.open(path, "w", **profile)
        except BaseException:  # the ones already open are closed, not held by the error
            for file in self.files.values():
                file.close()
            raise

    def write(self, name: str, box: Box, heatmap: np.ndarray) -> None:
        """Stores the h x w [0, 1] ``heatmap`` of class ``name`` at ``box``.

        Raises:
            OSError: GDAL failed (e.g. a full disk), naming the file and
                carrying GDAL's message.
        """
        from rasterio.windows import Window

        x0, y0, x1, y1 = box
        data = quantize_heatmap(heatmap)
        with _gdal_errors(self.paths[name]):
            self.files[name].write(data[None], window=Window(x0, y0, x1 - x0, y1 - y0))

    def close(self, overviews: bool | Container[Any] = True) -> None:
        """Closes the files, first adding average overviews (factors 2, 4, ...
        down to one block) to every file (``overviews`` True) or to those
        whose names ``overviews`` holds (the ones something reads at a lower
        resolution: previews, GIS tools).

        Raises:
            OSError: as :meth:`write`.
        """
        from rasterio.enums import Resampling

        for name, file in self.files.items():
            with _gdal_errors(self.paths[name]):
                if overviews is True or (overviews and name in overviews):
                    factors = []
                    while max(file.height, file.width) // 2 ** (len(factors) + 1) >= BLOCK // 2:
                        factors.append(2 ** (len(factors) + 1))
                    if factors:
                        file.build_overviews(factors, Resampling.average)
                        file.update_tags(ns="rio_overview", resampling="average")
                file.close()


@contextmanager
def _gdal_errors(path: str) -> Iterator[None]:
    """Turns rasterio's errors (often only "Write failed. See previous
    exception for details.") into an OSError naming ``path`` and carrying
    GDAL's own messages."""
    from rasterio.errors import RasterioError

    try:
        yield
    except RasterioError as e:
        raise OSError(f"Cannot write heatmap '{path}': {gdal_message(e)}") from e


def read_heatmap_window(path: str, box: Box | None = None) -> np.ndarray:
    """The float32 [0, 1] heatmap of a stored scene heatmap at ``box``
    (default: all of it)."""
    import rasterio
    from rasterio.windows import Window

    with _quiet(), rasterio.open(path) as src:
        window = None if box is None else Window(box[0], box[1], box[2] - box[0], box[3] - box[1])
        data = src.read(1, window=window)
    return dequantize_heatmap(data)


def heatmap_preview(path: str, max_side: int) -> np.ndarray:
    """A stored scene heatmap averaged down to ``max_side`` px on its longest
    side (served from its overviews): float32 [0, 1]."""
    import rasterio
    from rasterio.enums import Resampling

    with _quiet(), rasterio.open(path) as src:
        shape = decimated_shape(src.height, src.width, max_side)
        data = src.read(1, out_shape=shape, resampling=Resampling.average)
    return dequantize_heatmap(data)
