"""A labelling run as one object: its collection, key, record and claims."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import fiftyone as fo
import fiftyone.core.utils as fou

from ..brain import PseudoLabelsConfig, PseudoLabelsResults, stored_config
from ..claims import LEASE_S, POLL_S, RunClaims, schema_lock
from .checks import (
    check_batch_size,
    check_new_fields,
    check_resumable,
    check_settings,
    check_writable,
)
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
        record: the run's config, as stored with it.
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
        self.claims = RunClaims(samples._dataset, brain_key, lease_s)

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
        on the key, and the same record as the stored run or new fields."""
        check_settings(self.record)
        self.claims.refuse_if_running()
        if self.registered:
            check_resumable(self.samples, self.brain_key, self.record)
            return self.samples.exists(self.record.pred_field, False).values("id")
        check_new_fields(self.samples, self.record)
        return self.samples.values("id")

    def begin(self, pending: list[str]) -> None:
        """Registers the run (unless it resumes), declares its fields and
        fills its claim pool with ``pending``."""
        if not self.registered:
            self.record.build().register_run(self.samples, self.brain_key, overwrite=False)
        declare_fields(self.samples, self.record)
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
        with fou.ProgressBar(total=sum(claims.counts().values()), progress=progress) as pb:
            while claims.outstanding():
                batches = claims.batches(batch_size)
                if batches is None:
                    time.sleep(POLL_S)
                else:
                    for ids in annotate_batches(self.samples, model, self.record, batches):
                        claims.done(ids)
                        pb.set_iteration(claims.done_count())
                pb.set_iteration(claims.done_count())
            pb.set_iteration(pb.total)
        return self.finish(claims.elect_finaliser())

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
        workers = self.claims.live_workers()  # first: expires the claims of workers dead here
        pool = self.claims.counts()
        total = len(samples)
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


def declare_fields(samples: Any, record: PseudoLabelsConfig) -> None:
    """Declares the run's fields, taking turns with other processes (see
    :func:`~diffuprompter_plugin.claims.schema_lock`): concurrent
    declarations would be lost."""
    dataset = samples._dataset
    with schema_lock(dataset):
        for name, label_type in record.field_types().items():
            if dataset.has_sample_field(name):
                continue
            if issubclass(label_type, fo.Field):
                dataset.add_sample_field(name, label_type)
            else:
                dataset.add_sample_field(
                    name, fo.EmbeddedDocumentField, embedded_doc_type=label_type
                )
