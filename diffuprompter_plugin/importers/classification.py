"""Import of the remote-sensing scene-classification collections."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from functools import partial
from operator import itemgetter
from pathlib import Path

import fiftyone as fo

from ..engine.class_names import match_key
from .categories import COLLECTIONS, Collection, find_collection
from .common import ImportReport, image_metadata, is_image, new_files, run_import
from .dlr import import_dlr_munich

DLR = match_key("DLR Munich")


def detect_collection(root: Path) -> Collection:
    """The collection a root folder belongs to, by its own or a parent's name.

    Raises:
        ValueError: the layout is not recognised.
    """
    for folder in (root, *root.parents):
        collection = find_collection(folder.name)
        if collection is not None:
            return collection
    known = ", ".join(sorted(COLLECTIONS))
    raise ValueError(
        f"Cannot tell which collection '{root}' is: name it with collection= "
        f"(one of {known}, DLR Munich) or keep the collection's own folder name"
    )


SPLIT_FOLDERS = {"train", "training", "val", "validation", "test", "testing"}
"""Folder names (matching keys) of a collection shipped as split folders, each
holding the class folders (RSD46-WHU: ``train/`` and ``test/``)."""


def class_folders(root: Path, collection: Collection) -> list[tuple[Path, str | None]]:
    """The class folders of a collection root, following its layout, each
    with its split folder's name (None when the collection has no splits).

    Raises:
        ValueError: the expected folders are missing.
    """
    base = root / collection.image_dir if collection.image_dir else root
    if not base.is_dir():
        base = root  # the user pointed at the image folder itself
    folders = sorted(p for p in base.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(
            f"'{base}' has no class folders; {collection.name} keeps images in "
            f"<root>/{collection.image_dir + '/' if collection.image_dir else ''}<class>/"
        )
    if all(match_key(f.name) in SPLIT_FOLDERS for f in folders):
        return [
            (c, split.name) for split in folders for c in sorted(split.iterdir()) if c.is_dir()
        ]
    return [(folder, None) for folder in folders]


def _image_paths(
    root: Path, collection: Collection, include_candidates: bool
) -> list[tuple[str, str, str, str, str | None]]:
    """``(path, source class, category, mapping, split)`` of every image in
    the folders that map onto a category.

    Raises:
        ValueError: no folder maps onto a category, or those that do hold
            no images, naming the folders found.
    """
    folders = class_folders(root, collection)
    mapped = []
    for folder, split in folders:
        category, candidate = collection.category(folder.name, include_candidates)
        if category is not None:
            mapped.append((folder, category, "candidate" if candidate else "direct", split))
    if not mapped:
        found = sorted({f.name for f, _ in folders})
        hint = "" if include_candidates else " (include_candidates=True adds scene-level ones)"
        raise ValueError(
            f"No folder of '{root}' is a {collection.name} class that maps onto a target "
            f"category{hint}; found: {', '.join(found)}"
        )
    paths = [
        (os.path.abspath(os.path.join(folder, f)), folder.name, category, mapping, split)
        for folder, category, mapping, split in mapped
        for f in sorted(os.listdir(folder))
        if is_image(f)
    ]
    if not paths:
        names = ", ".join(str(folder) for folder, *_ in mapped)
        raise ValueError(f"The target-category folders of '{root}' hold no images: {names}")
    return paths


def import_classification_collection(
    root: str | os.PathLike,
    name: str,
    collection: str | None = None,
    include_candidates: bool = False,
    tile_size: int = 512,
    progress: bool | Callable | None = None,
) -> ImportReport:
    """Imports a scene-classification collection's target-category images.

    Each sample gets ``ground_truth`` (a Classification with the paper's
    category), ``source_collection``, ``source_class`` and ``mapping``
    (``direct`` or ``candidate``), and ``split`` where the collection comes
    in split folders (RSD46-WHU's ``train/`` and ``test/``, each holding the
    class folders). Folders of other classes are skipped.
    Images already in the dataset (same file) are skipped, so several roots
    merge without duplicates and re-imports add nothing. Unreadable images
    are listed in the report's ``skipped``. Nothing is written if it fails.

    Args:
        root: the collection's folder, e.g. ``.../NWPU-RESISC45``.
        name: the dataset to create or add to (persistent).
        collection: the collection's name when its folder was renamed.
        include_candidates: also import scene-level candidate classes
            (parking lot -> vehicle, overpass -> bridge, ...).
        tile_size: tile side for DLR Munich frames (recognised by their
            ``.samp`` files or ``collection="DLR Munich"``), which are tiled
            by :func:`~diffuprompter_plugin.importers.dlr.import_dlr_munich`.
        progress: FiftyOne progress option.

    Raises:
        ValueError: unknown collection or layout, or nothing to import (no
            folder maps onto a category, or those that do hold no images).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"Collection folder '{root}' does not exist")
    if match_key(collection or "") == DLR or any(root.glob("*.samp")):
        return import_dlr_munich(root, name, tile_size=tile_size, progress=progress)
    found = find_collection(collection) if collection else detect_collection(root)
    if found is None:
        raise ValueError(f"Unknown collection '{collection}': use one of {sorted(COLLECTIONS)}")
    paths = _image_paths(root, found, include_candidates)
    return run_import(name, partial(_samples, found, paths, progress))


def _samples(
    collection: Collection,
    paths: list[tuple[str, str, str, str, str | None]],
    progress: bool | Callable | None,
    known: set[str],
    report: ImportReport,
) -> Iterator[fo.Sample]:
    for (path, source_class, category, mapping, split), metadata in new_files(
        paths, itemgetter(0), image_metadata, known, report, progress
    ):
        sample = fo.Sample(
            filepath=path,
            metadata=metadata,
            ground_truth=fo.Classification(label=category),
            source_collection=collection.name,
            source_class=source_class,
            mapping=mapping,
        )
        if split is not None:
            sample["split"] = split
        yield sample
