"""Import of a folder of GeoTIFF scenes, with App previews and georeferencing.

Each sample's ``filepath`` is the GeoTIFF itself (what the engine reads at
native resolution). The App cannot show TIFF, so each scene also gets a PNG
preview of the same extent, at display size, in ``preview_path``; the
dataset's App config shows that field in the grid and the modal. Labels are
relative to the scene, so they line up with the preview.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import fiftyone as fo
import fiftyone.core.utils as fou
import numpy as np
import rasterio
from PIL import Image
from pyproj import CRS, Transformer
from rasterio.enums import Resampling

from ..engine.raster import STRETCH_PERCENTILES, stretch
from .common import ImportReport, run_import

GEOTIFF_EXTENSIONS = {".tif", ".tiff"}

PREVIEW_FIELD = "preview_path"
"""The sample field holding the preview image the App shows."""


def default_bands(count: int) -> tuple[int, ...]:
    """The 1-based bands shown when none are chosen: 1, 2, 3 (RGB order of
    most products) for three or more bands, else band 1 as grey."""
    return (1, 2, 3) if count >= 3 else (1,)


def scene_bands(path: str, count: int, bands: Sequence[int] | None) -> tuple[int, ...]:
    """The bands to render from a file of ``count`` bands: ``bands`` or the
    default.

    Raises:
        OSError: a band the file does not have, naming the file.
    """
    if bands is None:
        return default_bands(count)
    if max(bands) > count:
        raise OSError(f"'{path}' has {count} band(s); bands {list(bands)} were asked for")
    return tuple(bands)


def render_preview(src: rasterio.DatasetReader, bands: Sequence[int], size: int) -> np.ndarray:
    """The scene's full extent as an H x W x 3 uint8 RGB image whose longest
    side is at most ``size``: a decimated read (served from overviews when
    the file has them), stretched as the engine stretches its input (uint8
    kept, floats in [0, 1] times 255, else the :data:`STRETCH_PERCENTILES`
    of the valid pixels); nodata and NaN pixels are black and do not set the
    stretch.

    Raises:
        OSError: the data cannot be read, naming the file.
    """
    scale = min(1.0, size / max(src.width, src.height))
    shape = (max(1, round(src.height * scale)), max(1, round(src.width * scale)))
    try:
        data = src.read(
            list(bands), out_shape=(len(bands), *shape), masked=True, resampling=Resampling.average
        )
    except rasterio.errors.RasterioError as e:
        raise OSError(f"cannot read '{src.name}': {e}") from e
    values = np.moveaxis(data.filled(0), 0, -1).astype(np.float64)
    valid = ~np.ma.getmaskarray(data).any(axis=0) & np.isfinite(values).all(axis=-1)
    rgb = np.zeros(values.shape, np.uint8)
    if valid.any():
        rgb[valid] = _stretch(values[valid], np.dtype(src.dtypes[bands[0] - 1]))
    return np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb


def _stretch(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return values.astype(np.uint8)
    if dtype.kind == "f" and values.min() >= 0 and values.max() <= 1:
        return np.round(values * 255).astype(np.uint8)
    return stretch(values, *np.percentile(values, STRETCH_PERCENTILES))


def footprint(crs: CRS, transform: rasterio.Affine, width: int, height: int) -> fo.GeoLocation:
    """The scene's centre and corner polygon in WGS84 lon/lat, for FiftyOne's
    map and geo queries."""
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    corners = [(0, 0), (width, 0), (width, height), (0, height), (0, 0)]
    ring = [list(to_lonlat.transform(*(transform @ c))) for c in corners]
    centre = list(to_lonlat.transform(*(transform @ (width / 2, height / 2))))
    return fo.GeoLocation(point=centre, polygon=[ring])


def scene_sample(
    path: str, preview_dir: Path, bands: Sequence[int] | None, preview_size: int
) -> fo.Sample:
    """A sample for one GeoTIFF, its preview written to ``preview_dir``.

    Fields: ``crs`` (WKT, None when the file has none), ``transform`` (the
    affine ``[a, b, c, d, e, f]``: x = a*col + b*row + c, y = d*col + e*row + f
    at pixel corners; None when not georeferenced), ``bands`` (1-based, as
    rendered), ``nodata``, ``preview_path``, ``location`` (lon/lat footprint)
    and metadata at native size.

    Raises:
        OSError: not a readable raster, or a band it lacks, naming the file.
    """
    try:
        with warnings.catch_warnings():  # no georeferencing is recorded as crs None
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise OSError(f"not a readable raster: {e}") from e
    with src:
        chosen = scene_bands(path, src.count, bands)
        preview = render_preview(src, chosen, preview_size)
        georeferenced = src.crs is not None
        crs = CRS.from_user_input(src.crs.to_wkt()) if georeferenced else None
        sample = fo.Sample(
            filepath=path,
            metadata=fo.ImageMetadata(
                width=src.width,
                height=src.height,
                num_channels=src.count,
                mime_type="image/tiff",
                size_bytes=os.path.getsize(path),
            ),
            crs=crs.to_wkt() if georeferenced else None,
            transform=list(src.transform)[:6] if georeferenced else None,
            bands=list(chosen),
            nodata=src.nodata,
            location=footprint(crs, src.transform, src.width, src.height)
            if georeferenced
            else None,
        )
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:10]
    preview_path = str(preview_dir / f"{Path(path).stem}-{digest}.png")
    Image.fromarray(preview).save(preview_path)
    sample[PREVIEW_FIELD] = preview_path
    return sample


def import_geotiffs(
    root: str | os.PathLike,
    name: str,
    bands: Sequence[int] | None = None,
    preview_size: int = 1024,
    preview_dir: str | os.PathLike | None = None,
    recursive: bool = True,
    progress: bool | Callable | None = None,
) -> ImportReport:
    """Imports every ``.tif``/``.tiff`` under ``root`` as a scene sample.

    Any band count and uint8/uint16/int/float data are accepted. Previews
    (PNG, longest side ``preview_size``) are written under ``preview_dir``
    (default: FiftyOne's dataset dir, ``__previews__/<name>``) and shown by
    the App through ``dataset.app_config`` (grid and modal media field
    ``preview_path``; ``filepath`` stays the GeoTIFF). See
    :func:`scene_sample` for the fields. Unreadable files, and files lacking
    a chosen band, are listed in ``report.skipped``.

    Args:
        root: the folder of scenes.
        name: the dataset to create or add to (files already in it are skipped).
        bands: one or three 1-based band indices for the preview; default
            1, 2, 3 (band 1 for one- and two-band files).

    Raises:
        ValueError: ``root`` is not a folder, or ``bands`` is not one or
            three 1-based indices.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"Scene folder '{root}' does not exist")
    if bands is not None:
        bands = tuple(int(b) for b in bands)
        if len(bands) not in (1, 3) or min(bands) < 1:
            raise ValueError(f"bands must be one or three 1-based indices, got {list(bands)}")
    files = sorted(
        str(p)
        for p in (root.rglob("*") if recursive else root.iterdir())
        if p.suffix.lower() in GEOTIFF_EXTENSIONS and p.is_file()
    )
    preview_dir = Path(
        preview_dir or os.path.join(fo.config.default_dataset_dir, "__previews__", name)
    )
    report = run_import(name, partial(_scenes, files, preview_dir, bands, preview_size, progress))
    show_previews(fo.load_dataset(name))
    return report


def show_previews(dataset: fo.Dataset) -> None:
    """Makes the App show ``preview_path`` in the grid and the modal."""
    config = dataset.app_config
    if PREVIEW_FIELD not in config.media_fields:
        config.media_fields = [*config.media_fields, PREVIEW_FIELD]
    config.grid_media_field = PREVIEW_FIELD
    config.modal_media_field = PREVIEW_FIELD
    dataset.save()


def _scenes(files, preview_dir, bands, size, progress, known, report) -> Iterator[fo.Sample]:
    preview_dir.mkdir(parents=True, exist_ok=True)
    load = partial(scene_sample, preview_dir=preview_dir, bands=bands, preview_size=size)
    with fou.ProgressBar(total=len(files), progress=progress) as pb:
        for path in files:
            pb.update()
            if path in known:
                report.existing += 1
                continue
            sample = report.load(load, path)
            if sample is not None:
                yield sample
