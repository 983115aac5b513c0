"""A remote scene's blocks kept on local disk as they are first read, so
labelling fetches each byte of the scene at most once.

Labelling a scene in tiles reads it twice (grounding, then segmenting) and
reads every overlap between tiles twice more; GDAL's caches hold only part
of a large scene, so over the network each of those reads would fetch its
blocks again. :class:`LocalCopy` reads the scene in :data:`BLOCK`-aligned
strips, each once, converts them as the engine reads every window (the
scene's one stretch), and writes them to a scratch GeoTIFF; every window is
then served from that file. It holds what the models see (RGB uint8 and the
valid mask), so its pixels are exactly those of a direct read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from .raster import Box, Raster

BLOCK = 512
"""Side of the strips read from the scene and of the scratch file's blocks;
a COG's blocks are usually 512 px, so each is fetched once."""


class LocalCopy(Raster):
    """Serves windows of ``source`` from a scratch file in ``folder``,
    reading each :data:`BLOCK`-aligned strip of ``source`` at most once.

    Args:
        source: the scene (a remote
            :class:`~diffuprompter_plugin.engine.raster.FileRaster`).
        folder: an existing folder for the scratch file (the caller deletes it).
    """

    def __init__(self, source: Raster, folder: str) -> None:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        self.source = source
        self.height, self.width, self.name = source.height, source.width, source.name
        rows, cols = -(-self.height // BLOCK), -(-self.width // BLOCK)
        self.fetched = np.zeros((rows, cols), bool)
        profile = dict(
            driver="GTiff", width=self.width, height=self.height, dtype="uint8",
            count=4,  # R, G, B and the valid mask (0 where nodata)
            tiled=True, blockxsize=BLOCK, blockysize=BLOCK, compress="deflate",
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a scratch file
            self.file = rasterio.open(os.path.join(folder, "scene.tif"), "w+", **profile)

    @property
    def georef(self) -> dict | None:
        return self.source.georef

    def read(self, box: Box | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        from rasterio.windows import Window

        x0, y0, x1, y1 = box or (0, 0, self.width, self.height)
        self._fetch(x0, y0, x1, y1)
        data = self.file.read(window=Window(x0, y0, x1 - x0, y1 - y0))
        rgb = np.ascontiguousarray(data[:3].transpose(1, 2, 0))
        valid = data[3] > 0
        return rgb, None if valid.all() else valid

    def _fetch(self, x0: int, y0: int, x1: int, y1: int) -> None:
        """Copies the blocks under the window that are not here yet, one
        read per block row and run of missing blocks."""
        from rasterio.windows import Window

        for row in range(y0 // BLOCK, -(-y1 // BLOCK)):
            missing = [c for c in range(x0 // BLOCK, -(-x1 // BLOCK)) if not self.fetched[row, c]]
            for first, last in _runs(missing):
                box = (
                    first * BLOCK,
                    row * BLOCK,
                    min((last + 1) * BLOCK, self.width),
                    min((row + 1) * BLOCK, self.height),
                )
                rgb, valid = self.source.read(box)
                mask = np.full(rgb.shape[:2], 255, np.uint8) if valid is None else valid * 255
                data = np.concatenate([rgb.transpose(2, 0, 1), mask[None].astype(np.uint8)])
                window = Window(box[0], box[1], box[2] - box[0], box[3] - box[1])
                self.file.write(data, window=window)
                self.fetched[row, first : last + 1] = True

    def close(self) -> None:
        """Closes the scratch file (the source stays open: its owner closes it)."""
        self.file.close()


def _runs(indices: list[int]) -> Iterator[tuple[int, int]]:
    """(first, last) of each run of consecutive integers."""
    start = prev = None
    for i in indices:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            yield start, prev
            start = prev = i
    if start is not None:
        yield start, prev


@contextmanager
def local_copy(raster: Raster) -> Iterator[Raster]:
    """A :class:`LocalCopy` of a remote scene (a raster whose ``remote`` is
    True), its scratch file deleted at exit; any other raster as it is."""
    if not getattr(raster, "remote", False):
        yield raster
        return
    folder = tempfile.mkdtemp(prefix="dp-remote-")
    copy = None
    try:
        copy = LocalCopy(raster, folder)
        yield copy
    finally:
        if copy is not None:
            copy.close()
        shutil.rmtree(folder, ignore_errors=True)
