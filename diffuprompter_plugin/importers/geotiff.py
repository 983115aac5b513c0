"""Import of GeoTIFF scenes (a folder, or URLs), with App previews and georeferencing.

Each sample's ``filepath`` is the GeoTIFF itself (what the engine reads at
native resolution): a local file, or the URL of a remote scene
(``https://``, ``s3://``), which is read where it lives, window by window
(see :mod:`~diffuprompter_plugin.engine.remote`). The App cannot show
TIFF, so each scene also gets a PNG preview of the same extent, at display
size, in ``preview_path``; the dataset's App config shows that field in the
grid and the modal. Labels are relative to the scene, so they line up with
the preview.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import fiftyone as fo
import fiftyone.core.media as fomm
import geopandas as gpd
import rasterio
import shapely
from PIL import Image
from pyproj import CRS

from ..engine.errors import InputImageError
from ..engine.raster import FileRaster
from ..engine.remote import display_name, is_remote
from ..geo import to_rfc7946
from ..labels import BANDS_FIELD
from .common import ImportReport, dataset_folder, new_files, run_import

GEOTIFF_EXTENSIONS = {".tif", ".tiff"}

PREVIEW_FIELD = "preview_path"
"""The sample field holding the preview image the App shows."""


FOOTPRINT_FIELD = "footprint"
"""The sample field holding a scene's footprint as valid GeoJSON (a
MultiPolygon, split at the antimeridian), for 2dsphere indexes and queries."""


def footprint(
    crs: CRS, transform: rasterio.Affine, width: int, height: int
) -> tuple[fo.GeoLocation, fo.GeoLocations]:
    """The scene's lon/lat ``location`` (centre point and corner polygon, for
    FiftyOne's map and geo queries) and ``footprint`` (its parts), both as
    the GeoJSON export writes them (:func:`~diffuprompter_plugin.geo.to_rfc7946`):
    longitudes within [-180, 180], a scene across the antimeridian split
    there. ``location.polygon`` holds one polygon only, so it is None for a
    split scene, whose ``footprint`` has both parts."""
    corners = [transform @ c for c in [(0, 0), (width, 0), (width, height), (0, height)]]
    centre = transform @ (width / 2, height / 2)
    shapes = gpd.GeoSeries([shapely.Polygon(corners), shapely.Point(centre)], crs=crs)
    outline, point = to_rfc7946(shapes)
    parts = [
        [_ring(p.exterior), *map(_ring, p.interiors)] for p in getattr(outline, "geoms", [outline])
    ]
    location = fo.GeoLocation(
        point=[point.x, point.y], polygon=parts[0] if len(parts) == 1 else None
    )
    return location, fo.GeoLocations(polygons=parts)


def _ring(ring: shapely.LinearRing) -> list[list[float]]:
    return [[x, y] for x, y in ring.coords]


def scene_sample(
    path: str, preview_dir: Path, bands: Sequence[int] | None, preview_size: int
) -> fo.Sample:
    """A sample for one GeoTIFF, its preview written to ``preview_dir``.

    The bands and the stretch are the engine's
    (:class:`~diffuprompter_plugin.engine.raster.FileRaster`), so the
    preview shows what the models see, and labelling reads the sample's
    ``bands``. Fields: ``crs`` (WKT, None when the file has none),
    ``transform`` (the affine ``[a, b, c, d, e, f]``: x = a*col + b*row + c,
    y = d*col + e*row + f at pixel corners; None when not georeferenced; a
    file with ground control points only gets the transform fitted to them,
    see :func:`~diffuprompter_plugin.engine.raster.gcp_georef`),
    ``bands`` (1-based R, G, B, or one band for grey), ``nodata``,
    ``preview_path``, ``location`` and ``footprint`` (lon/lat, see
    :func:`footprint`) and metadata at native size. A remote scene's header
    and preview are read over the network (the preview from the overview
    nearest ``preview_size``), never the whole file; its
    ``metadata.size_bytes`` is None (not fetched).

    Raises:
        OSError: not a readable raster, or a band it lacks, naming the file.
    """
    try:
        raster = FileRaster(path, bands)
    except InputImageError as e:
        raise OSError(str(e)) from e
    with raster:
        src = raster.dataset
        try:
            preview = raster.overview(preview_size)
        except InputImageError as e:  # e.g. a truncated file: GDAL's message, the file named
            raise OSError(str(e)) from e
        chosen = raster.bands[:1] if len(set(raster.bands)) == 1 else raster.bands
        georef = raster.georef  # the file's, or fitted to its ground control points
        georeferenced = georef is not None and georef["crs"] is not None
        crs = CRS.from_user_input(georef["crs"].to_wkt()) if georeferenced else None
        transform = georef["transform"] if georeferenced else None
        remote = is_remote(path)
        sample = fo.Sample(
            filepath="scene.tif" if remote else path,  # FiftyOne would make a URL a local path
            metadata=fo.ImageMetadata(
                width=src.width,
                height=src.height,
                num_channels=src.count,
                mime_type="image/tiff",
                size_bytes=None if remote else os.path.getsize(path),
            ),
            crs=crs.to_wkt() if georeferenced else None,
            transform=list(transform)[:6] if georeferenced else None,
            nodata=src.nodata,
        )
        if georeferenced:
            location, parts = footprint(crs, transform, src.width, src.height)
            sample["location"], sample[FOOTPRINT_FIELD] = location, parts
        sample[BANDS_FIELD] = list(chosen)
        if remote:
            if fomm.get_media_type(path) != fomm.IMAGE:
                raise OSError(
                    f"FiftyOne cannot store '{path}' as an image's filepath: the URL's path "
                    "has no image extension such as .tif"
                )
            sample.filepath = path
    digest = hashlib.sha1((path if remote else os.path.abspath(path)).encode()).hexdigest()[:10]
    preview_path = str(preview_dir / f"{display_name(path)}-{digest}.png")
    Image.fromarray(preview).save(preview_path)
    sample[PREVIEW_FIELD] = preview_path
    return sample


def import_geotiffs(
    root: str | os.PathLike | Sequence[str | os.PathLike],
    name: str,
    bands: Sequence[int] | None = None,
    preview_size: int = 1024,
    preview_dir: str | os.PathLike | None = None,
    recursive: bool = True,
    progress: bool | Callable | None = None,
) -> ImportReport:
    """Imports every ``.tif``/``.tiff`` under ``root`` as a scene sample;
    ``root`` may also be one file or URL, or a list of files and URLs.

    Any band count and uint8/uint16/int/float data are accepted. Previews
    (PNG, longest side ``preview_size``) are written under ``preview_dir``
    (default: ``<FiftyOne's dataset dir>/__previews__/<dataset id>``) and shown by
    the App through ``dataset.app_config`` (grid and modal media field
    ``preview_path``; ``filepath`` stays the GeoTIFF). See
    :func:`scene_sample` for the fields. Unreadable files, and files lacking
    a chosen band, are listed in ``report.skipped``.

    Args:
        root: the folder of scenes, a scene's file or URL (``https://``,
            ``s3://``: read where it lives, see
            :mod:`~diffuprompter_plugin.engine.remote`), or a list of them.
        name: the dataset to create or add to (files already in it are skipped).
        bands: one or three 1-based band indices, shown in the preview and
            read by the engine when the scenes are labelled; default the
            bands tagged red, green and blue, else 1, 2, 3, else band 1.

    Raises:
        ValueError: ``root`` is neither a folder, a file, a URL nor a list
            of them, or ``bands`` is not one or three 1-based indices.
    """
    files = scene_files(root, recursive)
    bands = check_bands(bands)
    report = run_import(name, partial(_scenes, files, preview_dir, bands, preview_size, progress))
    show_previews(fo.load_dataset(name))
    return report


def scene_files(
    root: str | os.PathLike | Sequence[str | os.PathLike], recursive: bool = True
) -> list[str]:
    """The scenes to import: a folder's ``.tif``/``.tiff`` files (sorted), a
    file or URL, or a list of files and URLs (local paths made absolute).

    Raises:
        ValueError: a folder or file that does not exist, or an empty list.
    """
    if not isinstance(root, (str, os.PathLike)):
        files = [os.fspath(r) if is_remote(r) else os.path.abspath(r) for r in root]
        if not files:
            raise ValueError("No scenes given: the list of files and URLs is empty")
        return files
    if is_remote(root):
        return [os.fspath(root)]
    folder = Path(root)
    if folder.is_file():
        return [str(folder.absolute())]
    if not folder.is_dir():
        raise ValueError(f"Scene folder '{root}' does not exist")
    return sorted(
        str(p.absolute())
        for p in (folder.rglob("*") if recursive else folder.iterdir())
        if p.suffix.lower() in GEOTIFF_EXTENSIONS and p.is_file()
    )


def check_bands(bands: Sequence[int] | None) -> tuple[int, ...] | None:
    """``bands`` as a tuple, checked: one or three 1-based indices.

    Raises:
        ValueError: anything else.
    """
    if bands is None:
        return None
    bands = tuple(int(b) for b in bands)
    if len(bands) not in (1, 3) or min(bands) < 1:
        raise ValueError(f"bands must be one or three 1-based indices, got {list(bands)}")
    return bands


def show_previews(dataset: fo.Dataset) -> None:
    """Makes the App show ``preview_path`` in the grid and the modal."""
    config = dataset.app_config
    if PREVIEW_FIELD not in config.media_fields:
        config.media_fields = [*config.media_fields, PREVIEW_FIELD]
    config.grid_media_field = PREVIEW_FIELD
    config.modal_media_field = PREVIEW_FIELD
    dataset.save()


def scene_loader(
    preview_dir: str | os.PathLike | None,
    bands: Sequence[int] | None,
    preview_size: int,
    report: ImportReport,
) -> Callable[[str], fo.Sample]:
    """:func:`scene_sample` with its previews written to ``preview_dir``,
    or by default to ``<FiftyOne's dataset dir>/__previews__/<dataset id>``
    (never a folder named after the dataset); the folder is created."""
    folder = (
        Path(preview_dir) if preview_dir else dataset_folder("__previews__", report.dataset_id)
    )
    folder.mkdir(parents=True, exist_ok=True)
    return partial(scene_sample, preview_dir=folder, bands=bands, preview_size=preview_size)


def _scenes(files, preview_dir, bands, size, progress, known, report) -> Iterator[fo.Sample]:
    load = scene_loader(preview_dir, bands, size, report)
    for _, sample in new_files(files, str, load, known, report, progress):
        yield sample
