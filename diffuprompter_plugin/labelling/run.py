"""A labelling run as one object: its collection, key, record and claims."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import fiftyone as fo
import fiftyone.core.utils as fou
from fiftyone.core.odm import get_db_conn

from ..brain import (
    PseudoLabels,
    PseudoLabelsConfig,
    PseudoLabelsResults,
    quality_field,
    stored_config,
)
from ..claims import LEASE_S, POLL_S, RunClaims, RunDeletedError, cleanup_claims, schema_lock
from ..labels import HEATMAP_FILES
from ..verdicts import enable_editing
from .checks import (
    check_batch_size,
    check_new_fields,
    check_resumable,
    check_settings,
    check_writable,
)
from .record import new_run_id
from .writer import annotate_batches

logger = logging.getLogger(__name__)


class Run:
    """The brain run ``brain_key`` on ``samples``, as this worker sees it.

    Its lifecycle: :meth:`pending` checks that it may start (or resume) and
    says what is left to compute; :meth:`begin` registers it, declares its
    fields and fills its claim pool; :meth:`label` labels claimed samples
    until none is left to any worker; :meth:`finish` computes the results,
    which the worker that ends last saves.

    Args:
        samples: the dataset or view of the run.
        brain_key: the run's key.
        record: the run's config, as stored with it; a record without a
            run id (stored before run ids) is given one, stored by
            :meth:`begin`.
        lease_s: seconds this worker's claims last without renewal.
    """

    def __init__(
        self,
        samples: Any,
        brain_key: str,
        record: PseudoLabelsConfig,
        lease_s: float = LEASE_S,
    ) -> None:
        self.samples = samples
        self.brain_key = brain_key
        self.record = record
        if record.run_id is None:
            record.run_id = new_run_id()
        self.claims = RunClaims(samples._dataset, brain_key, record.run_id, lease_s)
        self.lost: list[str] = []

    @classmethod
    def stored(cls, samples: Any, brain_key: str, lease_s: float = LEASE_S) -> Run:
        """The existing run ``brain_key``, with its stored record."""
        return cls(samples, brain_key, stored_config(samples, brain_key), lease_s)

    @property
    def registered(self) -> bool:
        """Whether the collection holds a run under this key already."""
        return self.brain_key in self.samples.list_brain_runs()

    def pending(self) -> list[str]:
        """The ids of the samples the run must compute, once it is checked
        that the run may start (or resume): valid settings, no live workers
        on the key, and the same record as the stored run or new fields. A
        resumed run's samples whose heatmap files are gone (``lost``) are
        computed again."""
        check_settings(self.record)
        self.claims.refuse_if_running()
        if self.registered:
            check_resumable(self.samples, self.brain_key, self.record)
            self.lost = self.lost_heatmaps()
            if self.lost:
                logger.warning(
                    "%d samples of run '%s' lost their heatmap files: they are computed again",
                    len(self.lost),
                    self.brain_key,
                )
            return self.samples.exists(self.record.pred_field, False).values("id") + self.lost
        check_new_fields(self.samples, self.record)
        return self.samples.values("id")

    def lost_heatmaps(self) -> list[str]:
        """The ids of the samples with instances whose heatmap files (PNGs,
        scenes' GeoTIFFs, the draws' spreads) are not all on disk any more."""
        fields = [
            f"{field}.{attribute}"
            for field in self.record.heatmap_fields.values()
            for attribute in HEATMAP_FILES
        ]
        done = self.samples.exists(self.record.pred_field)
        ids, *paths = done.values(["id", *fields])
        return [
            sample
            for sample, files in zip(ids, zip(*paths, strict=True), strict=True)
            if any(f is not None and not os.path.exists(f) for f in files)
        ]

    def begin(self, pending: list[str]) -> None:
        """Registers the run (unless it resumes; a run stored before run ids
        gets its id now), declares its fields, clears the instances of its
        ``lost`` samples, and fills its claim pool with ``pending``. Orphan
        claims of deleted runs and datasets are removed first."""
        cleanup_claims()
        if not self.registered:
            self.record.build().register_run(self.samples, self.brain_key, overwrite=False)
        else:
            stored = stored_config(self.samples, self.brain_key)
            if stored.run_id is None:
                stored.run_id = self.record.run_id
                PseudoLabels.update_run_config(self.samples, self.brain_key, stored)
        declare_fields(self.samples, self.record)
        if self.lost:
            lost = self.samples._dataset.select(self.lost)
            lost.clear_sample_field(self.record.pred_field)
            lost.clear_sample_field(quality_field(self.record.pred_field))
        self.claims.start(pending)

    def compute(
        self,
        model: Any = None,
        batch_size: int = 16,
        progress: bool | Callable | None = None,
        device: str | None = None,
    ) -> PseudoLabelsResults:
        """Labels the whole run here, as its one worker: checks it, loads the
        model (``model`` when given; none when nothing is pending), begins
        the run, labels and finishes it. A refused run, or a model that
        cannot be loaded, fails before anything is written."""
        check_batch_size(batch_size)
        pending = self.pending()
        if pending:
            check_writable(self.record.heatmap_dir)
            model = self.record.load_model(device, model)
        self.begin(pending)
        with self.claims.joined():
            return self.label(model, batch_size, progress)

    def label(
        self, model: Any, batch_size: int, progress: bool | Callable | None = None
    ) -> PseudoLabelsResults:
        """Labels samples claimed from the pool until none is left to any
        worker, then :meth:`finish`. Each round labels the batches it claims
        (up to ``batch_size`` samples each) as one stream; with none free, it
        waits for other workers' last claims and takes them over when their
        lease runs out. Runs inside ``self.claims.joined()``."""
        claims = self.claims
        try:
            with fou.ProgressBar(total=sum(claims.counts().values()), progress=progress) as pb:
                while claims.outstanding():
                    batches = claims.batches(batch_size)
                    if batches is None:
                        time.sleep(POLL_S)
                    else:
                        stream = annotate_batches(
                            self.samples, model, self.record, batches, claims.check_exists
                        )
                        for ids in stream:
                            claims.done(ids)
                            pb.set_iteration(claims.done_count())
                    pb.set_iteration(claims.done_count())
                claims.check_exists()  # a deleted run's pool is gone too: nothing to finish
                pb.set_iteration(pb.total)
        except RunDeletedError:
            self.erase_traces()
            raise
        return self.finish(claims.elect_finaliser())

    def erase_traces(self) -> None:
        """Removes what this worker may have written for its deleted run
        while the run was being deleted: its heatmap folder (the run's own)
        and values of its fields that the dataset no longer declares."""
        shutil.rmtree(self.record.heatmap_dir, ignore_errors=True)
        self.claims.close()
        from bson import ObjectId

        if get_db_conn().datasets.count_documents({"_id": ObjectId(self.claims.dataset)}, limit=1):
            dataset = self.samples._dataset  # else deleted, and its samples with it
            dataset.reload()
            erase_undeclared(dataset, list(self.record.field_types()))

    def finish(self, finaliser: bool) -> PseudoLabelsResults:
        """The run's results; the ``finaliser`` (the worker that ends last)
        saves them and empties the pool."""
        method = self.record.build()
        results = self.results(method)
        if finaliser:
            self.samples._dataset.reload()
            method.save_run_results(self.samples, self.brain_key, results)
            self.claims.close()
        if results.failures:
            logger.warning("%d samples failed; see results.failures", len(results.failures))
        return results

    def results(self, method: Any = None) -> PseudoLabelsResults:
        """The run's counts, recomputed from the dataset."""
        record = self.record
        done = self.samples.exists(record.pred_field)
        failed = self.samples.exists(record.error_field)
        ids, errors = failed.values(["id", record.error_field])
        return PseudoLabelsResults(
            self.samples,
            record,
            self.brain_key,
            processed=done.count(),
            instances=done.count(f"{record.pred_field}.detections"),
            per_class=done.count_values(f"{record.pred_field}.detections.label"),
            failures=dict(zip(ids, errors, strict=True)),
            backend=method,
        )

    def status(self) -> dict[str, Any]:
        """See :func:`~diffuprompter_plugin.labelling.pseudo_labels_status`."""
        record, samples = self.record, self.samples
        cleanup_claims()
        workers = self.claims.live_workers()  # first: expires the claims of workers dead here
        pool = self.claims.counts()
        total = samples.count("id")  # exact: a dataset's own count() is MongoDB's estimate
        done = samples.exists(record.pred_field).count()
        failed = samples.exists(record.pred_field, False).exists(record.error_field).count()
        busy = pool["claimed"] + pool["stale"]
        return {
            "total": total,
            "done": done,
            "failed": failed,
            "claimed": pool["claimed"],
            "stale": pool["stale"],
            "pending": max(total - done - failed - busy, 0),
            "workers": len(workers),
            "dead_operations": self.dead_operations(),
            "lost_heatmaps": len(self.lost_heatmaps()),
        }

    def dead_operations(self) -> list[str]:
        """The ids of the run's delegated operations that FiftyOne runs but
        whose worker died, with a warning on how to mark them failed;
        forgets the other dead workers."""
        from bson import ObjectId
        from fiftyone.operators.delegated import DelegatedOperationService
        from fiftyone.operators.executor import ExecutionRunState

        service = DelegatedOperationService()
        running, forgotten = [], []
        for worker, operation in self.claims.dead_workers().items():
            state = None
            if operation is not None:
                with contextlib.suppress(ValueError):  # a deleted operation
                    state = service.get(ObjectId(operation)).run_state
            if state == ExecutionRunState.RUNNING:
                running.append(operation)
            else:
                forgotten.append(worker)
        self.claims.forget(forgotten)
        if running:
            logger.warning(
                "The workers of %d operations of run '%s' died; FiftyOne keeps the operations "
                "RUNNING. Mark them failed with: fiftyone delegated fail %s",
                len(running),
                self.brain_key,
                " ".join(sorted(running)),
            )
        return sorted(running)


def erase_undeclared(dataset: Any, fields: list[str]) -> None:
    """Removes the stored values of those ``fields`` that ``dataset`` does
    not declare (left by a deleted run's last writes), so that no run that
    declares them later inherits them."""
    stale = [f for f in fields if not dataset.has_sample_field(f)]
    if stale:
        dataset._sample_collection.update_many(
            {"$or": [{f: {"$exists": True}} for f in stale]},
            {"$unset": dict.fromkeys(stale, "")},
        )


def declare_fields(samples: Any, record: PseudoLabelsConfig) -> None:
    """Declares the run's fields, taking turns with other processes (see
    :func:`~diffuprompter_plugin.claims.schema_lock`): concurrent
    declarations would be lost. A field is emptied of stored values that
    no declared field exposed before it is declared."""
    dataset = samples._dataset
    with schema_lock(dataset):
        erase_undeclared(dataset, list(record.field_types()))
        for name, label_type in record.field_types().items():
            if dataset.has_sample_field(name):
                continue
            if issubclass(label_type, fo.Field):
                dataset.add_sample_field(name, label_type)
            else:
                dataset.add_sample_field(
                    name, fo.EmbeddedDocumentField, embedded_doc_type=label_type
                )
        enable_editing(dataset, record.pred_field, list(record.heatmap_fields))
