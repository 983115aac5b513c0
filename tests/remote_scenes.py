"""Cloud-optimised GeoTIFF scenes for the remote-reading tests and benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np

UTM33 = "EPSG:32633"


def write_cog(
    path: str | Path, width: int, height: int, blocksize: int = 128, seed: int = 0
) -> Path:
    """An RGB uint8 COG (deflate, ``blocksize`` px blocks, average overviews
    down to one block) in UTM 33N at 0.5 m: noise over a gradient, with
    bright rectangles in the red channel every 150 px (objects for the
    stub models; dark elsewhere). Written in one go, so keep it small."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = (xx * 120 // max(width, 1) + rng.integers(0, 60, (height, width))).astype(np.uint8)
    red = rng.integers(20, 30, (height, width), dtype=np.uint8)  # dark, but for the objects
    red[(yy % 150 < 30) & (xx % 150 < 45)] = 235
    with rasterio.open(
        path, "w", driver="COG", width=width, height=height, count=3, dtype="uint8",
        crs=UTM33, transform=from_origin(500000, 4500000, 0.5, 0.5), blocksize=blocksize,
        compress="deflate", overview_resampling="average",
    ) as dst:  # fmt: skip
        dst.write(np.stack([red, base, base // 2]))
    return Path(path)
