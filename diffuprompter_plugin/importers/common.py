"""What every importer shares: atomic commits, reports, image headers, tiling."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import cv2
import fiftyone as fo
import fiftyone.core.utils as fou
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..engine.tiles import tile_grid

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}

T = TypeVar("T")
R = TypeVar("R")


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file (and line)."""


@dataclass
class ImportReport:
    """What an import did.

    Attributes:
        dataset: the dataset name.
        dataset_id: the dataset's id, which names the folders of the files an
            import writes (see :func:`dataset_folder`).
        added: samples added.
        existing: samples skipped because their file was already imported.
        skipped: ``(path, reason)`` of files that were not imported.
    """

    dataset: str
    dataset_id: str | None = None
    added: int = 0
    existing: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def load(self, read: Callable[[str], T], path: str | os.PathLike) -> T | None:
        """``read(path)``, or None once an unreadable file (``OSError``) is
        recorded in :attr:`skipped` with its reason."""
        try:
            return read(str(path))
        except OSError as e:
            self.skipped.append((str(path), str(e)))
            return None

    def to_dict(self) -> dict:
        """JSON-serialisable form, for logs and operator outputs."""
        return {
            "dataset": self.dataset,
            "dataset_id": self.dataset_id,
            "added": self.added,
            "existing": self.existing,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def new_files(
    items: Sequence[T],
    path: Callable[[T], str | os.PathLike],
    read: Callable[[str], R],
    known: set[str],
    report: ImportReport,
    progress: bool | Callable | None,
) -> Iterator[tuple[T, R]]:
    """``(item, read(its file))`` of each item whose file is new and reads.

    A file already in the dataset (in ``known``) is counted in
    ``report.existing``; one that does not read is recorded in
    ``report.skipped`` (see :meth:`ImportReport.load`). A FiftyOne progress
    bar counts every item.

    Args:
        items: what to import, in order.
        path: the file of an item.
        read: what to load from a new file (its metadata, its sample).
    """
    with fou.ProgressBar(total=len(items), progress=progress) as pb:
        for item in items:
            pb.update()
            file = str(path(item))
            if file in known:
                report.existing += 1
                continue
            loaded = report.load(read, file)
            if loaded is not None:
                yield item, loaded


def dataset_folder(kind: str, dataset_id: str) -> Path:
    """``<FiftyOne's dataset dir>/<kind>/<dataset id>``: where an import
    writes a dataset's own files (previews, tiles, patches) unless the caller
    names a folder. Named by the dataset's id, never by its name, so no name
    (absolute, ``..``, separators) leads outside FiftyOne's dataset dir, and
    a renamed dataset keeps its folder."""
    return Path(fo.config.default_dataset_dir) / kind / dataset_id


def is_image(path: str) -> bool:
    """Whether a file name has an image extension (any case)."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def image_metadata(path: str) -> fo.ImageMetadata:
    """Size and channels from the file header (no decoding).

    Raises:
        OSError: the file is missing or not an image.
    """
    try:
        with Image.open(path) as img:
            width, height = img.size
            channels = len(img.getbands())
    except UnidentifiedImageError as e:
        raise OSError(f"not a readable image: {e}") from e
    return fo.ImageMetadata(
        width=width, height=height, num_channels=channels, size_bytes=os.path.getsize(path)
    )


def read_image(path: str) -> np.ndarray:
    """Decodes an image with its own bit depth and channels (BGR for colour).

    Raises:
        OSError: the image cannot be decoded.
    """
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError(f"cannot decode image '{path}'")
    return image


@contextlib.contextmanager
def staged_import(
    name: str, info: dict | None = None
) -> Iterator[tuple[fo.Dataset, set[str], str]]:
    """Yields a staging dataset, the file paths already in dataset ``name``
    and the id ``name`` has (or will have: the staging dataset's).

    On success the staged samples are added to ``name`` (created persistent if
    absent) and ``info`` is merged into its ``info``; on any error the staging
    dataset is deleted and ``name`` is left exactly as it was.
    """
    exists = fo.dataset_exists(name)
    known = set(fo.load_dataset(name).values("filepath")) if exists else set()
    staging = fo.Dataset(f"{name}-import-{uuid.uuid4().hex[:8]}")
    dataset_id = str((fo.load_dataset(name) if exists else staging)._doc.id)
    try:
        yield staging, known, dataset_id
    except BaseException:
        staging.delete()
        raise
    if exists:
        dataset = fo.load_dataset(name)
        dataset.add_collection(staging)
        staging.delete()
    else:
        dataset = staging
        dataset.name = name
        dataset.persistent = True
    if info:
        dataset.info.update(info)
        dataset.save()


def run_import(
    name: str,
    samples: Callable[[set[str], ImportReport], Iterable[fo.Sample]],
    info: dict | None = None,
) -> ImportReport:
    """Imports into dataset ``name`` atomically (see :func:`staged_import`).

    Args:
        name: the dataset to create or add to.
        samples: called with the file paths already in the dataset and the
            report (whose ``dataset_id`` is set); yields the new samples and
            records skipped files.
        info: entries for the dataset's ``info`` (e.g. the evaluation
            convention ``max_dets``).
    """
    report = ImportReport(name)
    with staged_import(name, info) as (staging, known, dataset_id):
        report.dataset_id = dataset_id
        report.added = add_in_batches(staging, samples(known, report))
    return report


def add_in_batches(dataset: fo.Dataset, samples: Iterable[fo.Sample], batch: int = 512) -> int:
    """Adds samples from an iterator in batches; returns how many."""
    count, buffer = 0, []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) == batch:
            dataset.add_samples(buffer, progress=False)
            count, buffer = count + len(buffer), []
    if buffer:
        dataset.add_samples(buffer, progress=False)
    return count + len(buffer)


def windows(width: int, height: int, size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Patch windows (x0, y0, x1, y1) covering an image, row by row: the
    engine's tile grid (:func:`~diffuprompter_plugin.engine.tiles.tile_grid`),
    stride ``size - overlap``, a window that would overrun an edge shifted
    back inside (the iSAID devkit rule), so no padding is needed. A side
    shorter than ``size`` gives one window of that side's length."""
    if not 0 <= overlap < size:
        raise ValueError(f"overlap {overlap} must be in [0, patch size {size})")
    return [tile for tile, _ in tile_grid(height, width, size, overlap)]
