"""Writing a stream of labelled batches to the dataset as each completes."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fiftyone as fo

from ..brain import PseudoLabelsConfig, quality_field
from ..claims import RunDeletedError
from ..engine.class_names import ClassName
from ..labels import sample_classes, sample_image, store_instances, write_heatmap

logger = logging.getLogger(__name__)


@dataclass
class _Batch:
    """A claimed batch of sample ids, and how many of its samples that lack
    instances are still being labelled."""

    ids: list[str]
    left: int


def annotate_batches(
    samples: Any,
    model: Any,
    record: PseudoLabelsConfig,
    batches: Iterable[list[str]],
    check: Callable[[], None] = lambda: None,
) -> Iterator[list[str]]:
    """Annotates the samples of ``batches`` (lists of ids) that lack instances
    as one stream through ``model.annotate_all``, so that its CRF pool serves
    them all and never drains between batches; ``batches`` is read as the
    stream needs more input.

    ``check`` is called before each sample's files are written and before
    each save; it raises :class:`~diffuprompter_plugin.claims.RunDeletedError`
    once the run is gone, and the stream stops without writing anything more.

    Yields:
        each batch's ids once its results are in the database, so a batch
        is never reported before it is saved; a stream that is interrupted
        saves what it has labelled, which resume then skips (unless its run
        was deleted).
    """
    unsaved: list[fo.Sample] = []
    saved: list[list[str]] = []

    def save() -> None:
        if not unsaved:
            return
        try:
            check()
            with samples.save_context() as saver:
                for sample in unsaved:
                    saver.save(sample)
        finally:
            unsaved.clear()  # a failed save is not tried again on the way out

    def store(batch: _Batch, sample: fo.Sample, result: Any) -> None:
        check()
        write(sample, result, record)
        unsaved.append(sample)
        batch.left -= 1
        if batch.left == 0:
            save()
            saved.append(batch.ids)

    def items() -> Iterator[tuple[tuple[_Batch, fo.Sample], str, list[str]]]:
        for ids in batches:
            todo = list(samples.select(ids).exists(record.pred_field, False))
            batch = _Batch(ids, len(todo))
            if not todo:
                saved.append(ids)
            for sample in todo:
                names = record.classes or sample_classes(sample, record.class_field)
                if names:
                    yield (batch, sample), sample_image(sample), names
                else:
                    store(batch, sample, ValueError(f"no class in field '{record.class_field}'"))

    try:
        for (batch, sample), result in model.annotate_all(items()):
            try:
                store(batch, sample, result)
            except BaseException:  # not stored: its scene files, not moved, go
                if not isinstance(result, Exception):
                    result.discard()
                raise
            while saved:
                yield saved.pop(0)
        while saved:
            yield saved.pop(0)
    finally:
        with contextlib.suppress(RunDeletedError):  # a deleted run gets nothing more
            save()


def write(sample: fo.Sample, result: Any, record: PseudoLabelsConfig) -> None:
    """Stores one sample's annotation (heatmap files and fields, instances),
    or its error, on ``sample`` (not saved)."""
    if isinstance(result, Exception):
        _fail(sample, result, record)
        return
    for name, heatmap in result.heatmaps.items():
        path = os.path.join(record.heatmap_dir, ClassName(name).slug, f"{sample.id}.png")
        geotiff = result.heatmap_files.get(name)
        spread = result.spread_files.get(name, result.spreads.get(name))
        sample[record.heatmap_fields[name]] = write_heatmap(heatmap, path, geotiff, spread)
    height, width = result.image_shape
    try:
        store_instances(sample, record.pred_field, result.instances, width, height)
    except ValueError as e:  # more instances than a sample can hold
        _fail(sample, e, record)
        return
    sample[record.error_field] = None


def _fail(sample: fo.Sample, error: Exception, record: PseudoLabelsConfig) -> None:
    logger.warning("Sample %s (%s) failed: %s", sample.id, sample.filepath, error)
    sample[record.error_field] = f"{type(error).__name__}: {error}"
    if sample.has_field(quality_field(record.pred_field)):  # an earlier run's: now stale
        sample[quality_field(record.pred_field)] = None
