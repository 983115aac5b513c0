"""Georeferenced polygons from instance masks: GeoPackage and GeoJSON export.

Conventions (those of rasterio and GDAL):

- A sample's ``transform`` ``[a, b, c, d, e, f]`` maps pixel *corners*:
  ``x = a*col + b*row + c``, ``y = d*col + e*row + f``; pixel (col, row)
  covers the square from corner (col, row) to corner (col + 1, row + 1).
  Polygons trace pixel edges, so a polygon covers exactly its mask's pixels
  and its planar area is ``pixels * |a*e - b*d|``.
- A detection's mask is cropped to its box; its top-left pixel sits at
  ``(round(x * width), round(y * height))`` of the scene, as in
  :func:`diffuprompter_plugin.coco.full_mask`.
- One instance is one feature: a MultiPolygon whose parts are the mask's
  4-connected components, holes kept as interior rings.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Container
from typing import Any

import fiftyone as fo
import fiftyone.core.utils as fou
import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from pyproj import CRS
from rasterio import Affine
from rasterio.features import shapes

from .export import as_samples, check_included, missing_parents
from .labels import label_type
from .oriented import COLUMNS as ORIENTED_COLUMNS
from .oriented import oriented_features
from .verdicts import person_made_ids, verdict_name

DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}
"""Output formats by file extension."""

WGS84 = CRS.from_epsg(4326)
"""GeoJSON's only CRS (RFC 7946 section 4)."""

RFC7946 = {"RFC7946": "YES"}
"""GDAL's GeoJSON layer options for RFC 7946: WGS84 lon/lat, geometries
split at the antimeridian (longitudes within [-180, 180]), exteriors
counter-clockwise, 7 decimals."""

COLUMNS = {
    "label": "object",
    "score": "float64",
    "area_px": "int64",
    "area_m2": "float64",
    "sample_id": "object",
    "filepath": "object",
    "detection_id": "object",
    "quality": "float64",
    "verdict": "object",
}
"""The attribute table of every exported layer, in order."""


def georeference(sample: Any) -> tuple[CRS, Affine]:
    """The sample's CRS and pixel-corner geotransform, from its ``crs`` (WKT)
    and ``transform`` fields (set by
    :func:`~diffuprompter_plugin.importers.import_geotiffs`).

    Raises:
        ValueError: the sample has no georeferencing, naming its file.
    """
    wkt = sample["crs"] if sample.has_field("crs") else None
    transform = sample["transform"] if sample.has_field("transform") else None
    if wkt and transform:
        return CRS.from_wkt(wkt), Affine(*transform)
    why = _why_not_georeferenced(sample.filepath)
    if why is None:
        why = "its file is georeferenced: import it with import_geotiffs()"
    raise ValueError(f"Sample '{sample.filepath}' has no georeferencing: {why}")


def _why_not_georeferenced(path: str) -> str | None:
    """Why a file gives no CRS and transform (see
    :func:`~diffuprompter_plugin.engine.raster.gcp_georef`); None when it
    gives them."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    from .engine.errors import gdal_message
    from .engine.raster import gcp_georef

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as src:
                if src.crs is not None:
                    return None
                if not src.transform.is_identity:
                    return "the file has a geotransform but no CRS: assign one and import it again"
                return gcp_georef(src)[1]
        except RasterioIOError as e:
            return f"its file cannot be read: {gdal_message(e)}"


def to_rfc7946(geometries: gpd.GeoSeries) -> list[shapely.Geometry]:
    """Geometries (with their CRS) as the GeoJSON export writes them: through
    GDAL's RFC 7946 writer (:data:`RFC7946`), in memory, so a geometry that
    crosses the antimeridian comes back split into a MultiPolygon and every
    longitude lies within [-180, 180], as MongoDB's 2dsphere index needs."""
    buffer = io.BytesIO()
    frame = gpd.GeoDataFrame(geometry=geometries)
    pyogrio.write_dataframe(frame, buffer, driver="GeoJSON", layer_options=RFC7946)
    return list(pyogrio.read_dataframe(io.BytesIO(buffer.getvalue())).geometry)


def mask_geometry(mask: np.ndarray, transform: Affine) -> shapely.MultiPolygon:
    """The True pixels of a 2-D mask as a MultiPolygon in the coordinates of
    ``transform`` (pixel corners of ``mask`` to map): one part per
    4-connected component, holes as interior rings, exteriors counter-
    clockwise in map coordinates. Empty for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    parts = [
        shapely.geometry.shape(geometry)
        for geometry, _ in shapes(mask.astype(np.uint8), mask=mask, transform=transform)
    ]
    return shapely.orient_polygons(shapely.MultiPolygon(parts))


def detection_geometry(
    detection: fo.Detection, width: int, height: int, transform: Affine
) -> shapely.MultiPolygon:
    """A box-cropped instance mask as a MultiPolygon through the scene's
    ``transform`` (``width`` x ``height`` scene pixels); the mask is clipped
    to the scene.

    Raises:
        ValueError: the detection has no mask.
    """
    mask = detection.get_mask()
    if mask is None:
        raise ValueError(f"Detection {detection.id} ({detection.label}) has no mask")
    x, y, _, _ = detection.bounding_box
    col, row = int(round(x * width)), int(round(y * height))
    crop = mask[: height - row, : width - col]
    return mask_geometry(crop, transform @ Affine.translation(col, row))


def area_m2(geometry: shapely.Geometry, crs: CRS) -> float:
    """Area in square metres of a geometry in ``crs`` coordinates.

    Projected CRS: planar (grid) area, converted from the CRS's linear unit
    (e.g. a UTM square of 100 x 100 m is 10,000 m^2 exactly; UTM grid area
    differs from the ellipsoidal one by the scale factor, about 0.1 %).
    Geographic CRS (lon/lat): geodesic area on the CRS's ellipsoid. Other
    CRSs: NaN.
    """
    if crs.is_geographic:
        area, _ = crs.get_geod().geometry_area_perimeter(geometry)
        return abs(area)
    if crs.is_projected:
        metres = crs.axis_info[0].unit_conversion_factor
        return geometry.area * metres**2
    return float("nan")


def sample_features(
    sample: Any, pred_field: str, person: Container[str] = frozenset()
) -> gpd.GeoDataFrame:
    """One row per instance of ``pred_field`` with its attributes
    (:data:`COLUMNS`), in the sample's own CRS; the labels whose ids
    ``person`` holds are a person's work (:func:`~.verdicts.person_made`):
    no run's quality describes them (NaN), and an automatic rejection of
    them is void.

    Raises:
        ValueError: no georeferencing or no metadata, naming the file.
    """
    crs, transform = georeference(sample)
    metadata = sample.metadata
    if metadata is None or not metadata.width:
        raise ValueError(f"Sample '{sample.filepath}' has no metadata: run compute_metadata()")
    labels = sample[pred_field]
    rows, geometries = [], []
    for det in labels.detections if labels is not None else []:
        geometry = detection_geometry(det, metadata.width, metadata.height, transform)
        if geometry.is_empty:
            continue
        geometries.append(geometry)
        mine = det.id in person
        rows.append(
            {
                "label": det.label,
                "score": np.nan if det.confidence is None else float(det.confidence),
                "area_px": int(round(geometry.area / abs(transform.determinant))),
                "area_m2": area_m2(geometry, crs),
                "sample_id": sample.id,
                "filepath": sample.filepath,
                "detection_id": det.id,
                "quality": np.nan if mine else det.get_attribute_value("quality", np.nan),
                "verdict": verdict_name(det.tags, mine),
            }
        )
    table = pd.DataFrame(rows, columns=list(COLUMNS)).astype(COLUMNS)
    return gpd.GeoDataFrame(table, geometry=gpd.GeoSeries(geometries, crs=crs))


def export_geo(
    samples: Any,
    pred_field: str,
    path: str | os.PathLike,
    crs: Any = None,
    layer: str | None = None,
    include: str | float | None = None,
    overwrite: bool = False,
    progress: bool | Callable | None = None,
    oriented_boxes: bool = False,
) -> dict[str, Any]:
    """Writes the instance masks of a Detections field as georeferenced
    polygons, one MultiPolygon feature per instance (see the module notes).

    Format by extension: ``.gpkg`` is a GeoPackage layer in the samples'
    native CRS (or ``crs``); ``.geojson``/``.json`` is RFC 7946 GeoJSON in
    WGS84 lon/lat. Attributes: ``label``, ``score`` (the confidence),
    ``area_px``, ``area_m2`` (see :func:`area_m2`, computed in the native
    CRS), ``sample_id``, ``filepath``, ``detection_id``, ``quality`` and
    ``verdict`` (accepted, rejected, unreviewed or conflicting).

    A GeoPackage is a container: exporting into an existing one adds the
    layer and keeps the others; a layer of that name is replaced only with
    ``overwrite=True``, as is an existing GeoJSON file (or a ``.gpkg`` that
    is not a GeoPackage). The export is written to a temporary copy that
    then replaces ``path``, so a failed export leaves the file as it was.

    Args:
        samples: a dataset or view whose samples carry ``crs`` and
            ``transform`` (imported with ``import_geotiffs``).
        pred_field: the ``fo.Detections`` field with masks.
        path: the output file.
        crs: GeoPackage only: the CRS to write (anything pyproj accepts);
            needed when the samples are in different CRSs.
        layer: the GeoPackage layer name; default ``pred_field``.
        include: only the labels a review lets in, as in
            ``export_training_set`` (``"accepted"``, ``"accepted+unreviewed"``
            or a quality threshold); None: every label.
        overwrite: replace an existing layer of that name in any case
            (GeoPackage), with its ``<layer>_oriented`` where it has one (so
            the two layers keep describing the same instances), or an
            existing file (GeoJSON).
        oriented_boxes: GeoPackage only: also write each instance's
            oriented box (the minimum-area rectangle of its mask, see
            :mod:`~diffuprompter_plugin.oriented`) as a Polygon in a second
            layer, ``<layer>_oriented``.

    Returns:
        ``path``, ``samples``, ``features`` written and the output ``crs``
        (``EPSG:<code>`` where it has one, else WKT); with
        ``oriented_boxes``, ``oriented_layer`` too.

    Raises:
        ValueError: an unknown extension, ``pred_field`` not a Detections
            field, a sample without georeferencing or
            metadata (samples in pixel coordinates are refused, not written
            without a CRS), or several CRSs without ``crs``.
        FileExistsError: the layer (GeoPackage) or file (GeoJSON) exists and
            ``overwrite`` is False; checked before anything is read.
    """
    path = os.fspath(path)
    driver = DRIVERS.get(os.path.splitext(path)[1].lower())
    if driver is None:
        raise ValueError(f"Unknown format of '{path}': use one of {sorted(DRIVERS)}")
    if driver == "GeoJSON" and crs is not None:
        raise ValueError("GeoJSON is always WGS84 (RFC 7946); crs= applies to .gpkg only")
    if driver == "GeoJSON" and oriented_boxes:
        raise ValueError("GeoJSON holds one layer: write oriented boxes to a .gpkg")
    samples = as_samples(samples, pred_field)
    check_detections_field(samples, pred_field)
    person = person_made_ids(samples, pred_field)
    if include is not None:
        samples = check_included(samples, pred_field, include)
    layer = layer or pred_field
    check_layer_name(layer)
    companion = f"{layer}_oriented"
    existing = _existing_layers(path, driver, overwrite)
    # a layer replaced beside its oriented boxes gets them anew, so the two agree
    oriented_boxes = oriented_boxes or (
        overwrite
        and existing is not None
        and {layer.casefold(), companion.casefold()} <= {n.casefold() for n in existing}
    )
    names = [layer, companion] if oriented_boxes else [layer]
    _check_free(path, existing, names, overwrite)
    frames, boxes = [], []
    with fou.ProgressBar(total=len(samples), progress=progress) as pb:
        for sample in pb(samples):
            frames.append(sample_features(sample, pred_field, person))
            if oriented_boxes:
                boxes.append(oriented_features(sample, pred_field, *georeference(sample)))
    target = _output_crs(frames, driver, crs)
    table = pd.concat([f.to_crs(target) for f in frames] or [_empty(target)], ignore_index=True)
    layers = {layer: (gpd.GeoDataFrame(table, geometry="geometry", crs=target), "MultiPolygon")}
    if oriented_boxes:
        empty = [_empty(target, ORIENTED_COLUMNS)]
        rows = pd.concat([b.to_crs(target) for b in boxes] or empty, ignore_index=True)
        layers[companion] = (gpd.GeoDataFrame(rows, geometry="geometry"), "Polygon")
    _write_replacing(layers, path, driver, keep=existing is not None)
    crs_name = target.to_string()
    out = {"path": path, "samples": len(frames), "features": len(table), "crs": crs_name}
    return {**out, "oriented_layer": companion} if oriented_boxes else out


RESERVED_PREFIXES = ("gpkg_", "rtree_", "sqlite_")
"""Table names a GeoPackage keeps for itself (SQLite's and the format's)."""


def check_layer_name(layer: str) -> None:
    """Raises a ValueError naming ``layer`` when a GeoPackage cannot hold a
    layer of that name."""
    if not layer or layer.casefold().startswith(RESERVED_PREFIXES):
        raise ValueError(
            f"A GeoPackage cannot hold a layer named {layer!r}: names starting with "
            f"{', '.join(RESERVED_PREFIXES)} are its own; pass another layer="
        )


def check_detections_field(samples: Any, pred_field: str) -> None:
    """Raises a ValueError naming ``pred_field`` unless it is an
    ``fo.Detections`` field (what the GIS exports take)."""
    label_type(samples, pred_field, "export_geo takes an fo.Detections field with masks")


def _output_crs(frames: list[gpd.GeoDataFrame], driver: str, crs: Any) -> CRS:
    if driver == "GeoJSON":
        return WGS84
    if crs is not None:
        return CRS.from_user_input(crs)
    native = list({f.crs.to_wkt(): f.crs for f in frames}.values())
    if len(native) > 1:
        names = ", ".join(sorted(c.name for c in native))
        raise ValueError(f"The samples are in {len(native)} CRSs ({names}); pass crs=")
    if not native:
        raise ValueError("No samples to export")
    return native[0]


def _empty(crs: CRS, columns: dict[str, str] = COLUMNS) -> gpd.GeoDataFrame:
    table = pd.DataFrame(columns=list(columns)).astype(columns)
    return gpd.GeoDataFrame(table, geometry=gpd.GeoSeries([], crs=crs))


def _existing_layers(path: str, driver: str, overwrite: bool) -> list[str] | None:
    """The layers of the GeoPackage at ``path``, whose other layers the
    export keeps; None when there is nothing to keep (no file, GeoJSON, or
    a ``.gpkg`` that is not a GeoPackage, replaced with ``overwrite``).

    Raises:
        FileExistsError: the file exists, is not a GeoPackage and
            ``overwrite`` is False.
    """
    if not os.path.exists(path):
        return None
    if driver == "GPKG":
        try:
            return [str(name) for name, _ in pyogrio.list_layers(path)]
        except pyogrio.errors.DataSourceError as e:
            if not overwrite:
                raise FileExistsError(
                    f"'{path}' exists and is not a GeoPackage ({e}); pass overwrite=True "
                    "to replace it"
                ) from e
            return None
    if not overwrite:
        raise FileExistsError(f"'{path}' exists; pass overwrite=True to replace it")
    return None


def _check_free(path: str, existing: list[str] | None, layers: list[str], overwrite: bool) -> None:
    """Raises a FileExistsError naming the first of ``layers`` (the ones the
    export writes) that ``existing`` has, GeoPackage-style ignoring case,
    unless ``overwrite``."""
    keys = {name.casefold() for name in existing or []}
    taken = [name for name in layers if name.casefold() in keys]
    if taken and not overwrite:
        raise FileExistsError(
            f"Layer '{taken[0]}' exists in '{path}' (layers: {', '.join(existing)}); pass "
            "overwrite=True to replace it, or another layer="
        )


def _write_replacing(
    layers: dict[str, tuple[gpd.GeoDataFrame, str]], path: str, driver: str, keep: bool
) -> None:
    """Writes ``{layer: (frame, geometry type)}`` to a temporary file (a
    copy of ``path`` when ``keep``, so its other layers stay) that then
    replaces ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    made = missing_parents(os.path.abspath(path))
    temporary = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, temporary = tempfile.mkstemp(suffix=os.path.splitext(path)[1], dir=folder)
        os.close(fd)
        os.remove(temporary)  # the drivers create the file themselves
        if keep:  # the layers are added to the copy; ones of the same names are replaced
            shutil.copyfile(path, temporary)
        # GeoPackage: a layer of the same name in any case is replaced
        options = RFC7946 if driver == "GeoJSON" else {"OVERWRITE": "YES"}
        for layer, (frame, geometry_type) in layers.items():
            frame.to_file(
                temporary,
                driver=driver,
                layer=layer,
                geometry_type=geometry_type,
                layer_options=options,
            )
        os.replace(temporary, path)
    except BaseException:
        if temporary and os.path.exists(temporary):
            os.remove(temporary)
        for parent in made:  # the deepest first
            shutil.rmtree(parent, ignore_errors=True)
        raise
