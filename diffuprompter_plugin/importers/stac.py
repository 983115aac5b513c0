"""Import of STAC items as scene samples: one asset of each item, read where
it lives.

A STAC item (SpatioTemporal Asset Catalog) describes one acquisition and
links its files as *assets*, e.g. ``visual`` (a true-colour COG), ``red``,
``nir``. Each item becomes a scene sample whose ``filepath`` is its chosen
asset's href, imported as :func:`~.geotiff.import_geotiffs` imports a
scene (header and preview read remotely, from the COG's overviews), with
the item's id, datetime and properties beside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import fiftyone as fo
import fiftyone.core.utils as fou

from ..engine.remote import is_remote
from .common import ImportReport, run_import
from .geotiff import check_bands, scene_loader, show_previews

CATALOG_FILES = ("catalog.json", "collection.json")
"""The root file of a static catalogue folder, in the order looked for."""


def import_stac(
    items_or_catalog: Any,
    name: str,
    asset: str = "visual",
    bands: Sequence[int] | None = None,
    preview_size: int = 1024,
    preview_dir: str | os.PathLike | None = None,
    progress: bool | Callable | None = None,
) -> ImportReport:
    """Imports STAC items as scene samples, one per item, from its ``asset``.

    Each sample's ``filepath`` is the asset's absolute href (``https://``,
    ``s3://`` or a local file), read where it lives; the scene fields are
    those of :func:`~.geotiff.scene_sample` (``crs``, ``transform``,
    ``bands``, ``nodata``, ``location``, ``preview_path``, metadata), plus
    ``stac_id``, ``stac_collection``, ``datetime`` (the item's, or its
    ``start_datetime``), ``cloud_cover`` (``eo:cloud_cover``), ``platform``,
    ``gsd`` (the asset's, else the item's) and ``stac_properties`` (all the
    item's properties; dots in keys become ``_``). Items without ``asset``
    are listed in ``report.skipped`` with the assets they have, and so are
    assets that cannot be read; an asset already in the dataset counts as
    ``report.existing``.

    Args:
        items_or_catalog: a ``pystac.ItemCollection``, ``Catalog``,
            ``Collection`` or ``Item``, a list of items, a ``pystac_client``
            search (its ``items()`` are read, page by page), or the path or
            URL of a STAC JSON file (catalogue, collection, item or item
            collection) or of a static catalogue's folder (holding
            ``catalog.json`` or ``collection.json``).
        name: the dataset to create or add to.
        asset: the asset key to import, e.g. ``visual``.
        bands, preview_size, preview_dir: as for
            :func:`~.geotiff.import_geotiffs`.

    Raises:
        ValueError: a path that is no STAC JSON or catalogue folder, an
            object that holds no STAC items, or bad ``bands``.
    """
    import pystac

    items = list(stac_items(items_or_catalog))
    if not all(isinstance(item, pystac.Item) for item in items):
        raise ValueError(
            f"{type(items_or_catalog).__name__} holds objects that are not STAC items"
        )
    bands = check_bands(bands)
    scenes = partial(_item_samples, items, asset, preview_dir, bands, preview_size, progress)
    report = run_import(name, scenes)
    show_previews(fo.load_dataset(name))
    return report


def stac_items(source: Any) -> Iterator[Any]:
    """The ``pystac.Item``\\ s of any source :func:`import_stac` takes.

    Raises:
        ValueError: a path or URL that is no STAC JSON or catalogue folder.
    """
    import pystac

    if isinstance(source, (str, os.PathLike)):
        source = read_stac(source)
    if isinstance(source, pystac.Item):
        yield source
    elif isinstance(source, pystac.Catalog):  # Collections too
        yield from source.get_items(recursive=True)
    elif isinstance(source, pystac.ItemCollection):
        yield from source
    elif callable(getattr(source, "items", None)) and hasattr(source, "item_collection"):
        yield from source.items()  # a pystac_client ItemSearch
    elif isinstance(source, Iterable):
        yield from source
    else:
        raise ValueError(f"Cannot read STAC items from a {type(source).__name__}")


def read_stac(path: str | os.PathLike) -> Any:
    """The STAC object of a JSON file or URL, or of a catalogue folder's
    root file (:data:`CATALOG_FILES`): an item collection, catalogue,
    collection or item.

    Raises:
        ValueError: no such file or folder, or not STAC JSON; the message names it.
    """
    import pystac
    from pystac.errors import STACError, STACTypeError

    text = os.fspath(path)
    if not is_remote(text):
        folder = Path(text)
        if folder.is_dir():
            roots = [folder / f for f in CATALOG_FILES if (folder / f).is_file()]
            if not roots:
                raise ValueError(
                    f"STAC folder '{text}' holds no {' or '.join(CATALOG_FILES)}: give the "
                    "catalogue's JSON file"
                )
            text = str(roots[0])
        elif not folder.is_file():
            raise ValueError(f"STAC file '{text}' does not exist")
    try:
        data = pystac.StacIO.default().read_json(text)
        if data.get("type") == "FeatureCollection":
            return pystac.ItemCollection.from_dict(data, preserve_dict=False)
        return pystac.read_dict(data, href=text)
    except (OSError, json.JSONDecodeError, STACError, STACTypeError, AttributeError) as e:
        raise ValueError(f"Cannot read STAC JSON '{text}': {e}") from e


def _item_samples(items, asset, preview_dir, bands, preview_size, progress, known, report):
    """The samples of ``items``' ``asset`` not yet in the dataset."""
    load = scene_loader(preview_dir, bands, preview_size, report)
    with fou.ProgressBar(total=len(items), progress=progress) as pb:
        for item in items:
            pb.update()
            chosen = item.assets.get(asset)
            if chosen is None:
                have = ", ".join(sorted(item.assets)) or "none"
                report.skipped.append((item.id, f"no asset '{asset}' (its assets: {have})"))
                continue
            href = chosen.get_absolute_href()
            if not href:
                report.skipped.append((item.id, f"asset '{asset}' has a relative href "
                                       f"'{chosen.href}' and the item no location"))  # fmt: skip
                continue
            href = href if is_remote(href) else os.path.abspath(href)
            if href in known:
                report.existing += 1
                continue
            sample = report.load(load, href)
            if sample is not None:
                _add_item_fields(sample, item, chosen)
                yield sample


def _add_item_fields(sample: fo.Sample, item: Any, asset: Any) -> None:
    """The item's id, collection, datetime and properties on its sample."""
    properties = item.properties
    sample["stac_id"] = item.id
    sample["stac_collection"] = item.collection_id
    sample["datetime"] = item.datetime or item.common_metadata.start_datetime
    sample["cloud_cover"] = _number(properties.get("eo:cloud_cover"))
    sample["platform"] = properties.get("platform")
    sample["gsd"] = _number(asset.extra_fields.get("gsd", properties.get("gsd")))
    sample["stac_properties"] = {k.replace(".", "_"): v for k, v in properties.items()}


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
