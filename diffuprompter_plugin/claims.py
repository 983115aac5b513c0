"""Sharing one brain run between processes through the FiftyOne database.

A *worker* is a process that labels part of a run: a delegated operation
(:func:`~diffuprompter_plugin.labelling.label_queued_samples`, picked up by
``fiftyone delegated launch``), or the caller of ``compute_pseudo_labels``,
which joins its run as its one worker. The processes that run DenseCRF for
a model are its CRF pool, never workers.

A run's pending samples form a claim pool: one document per (run, sample)
in the collection ``diffuprompter_claims``, where the run is named by its
*run id*: a fresh id given to every run when it is registered and kept in
its record (``PseudoLabelsConfig.run_id``), so that a run's claims and
"done" marks are its own, and a later run under the same key (or a renamed
one) never inherits them. Every claim also names its dataset, so the
claims of deleted runs and datasets can be found and removed
(:func:`cleanup_claims`). Any number of workers, on any
machines that reach the same MongoDB, take samples from it in small batches
with atomic updates and a lease, so faster workers take more, no sample is
taken by two live workers, and a dead worker's samples are taken again once
its lease ends. Batches shrink as the pool empties, so that the workers end
together rather than one batch apart.

Each worker that joins a run also keeps a record (collection
``diffuprompter_workers``) naming the delegated operation it runs as. A
heartbeat thread renews the record's lease with its claims'; a worker that
ends removes it, so a record whose lease ran out is a dead worker, whose
operation FiftyOne keeps RUNNING (see :meth:`RunClaims.dead_workers`).

Every state change is one MongoDB update filtered on the state it expects,
which is atomic per document: a claim, a completion and the one-time
election of the worker that saves the run's results cannot race.

Field declarations need a lock of their own: FiftyOne declares a field by
rewriting the dataset's whole ``sample_fields`` list, so two processes that
declare fields at once lose one another's (last writer wins).
:func:`schema_lock` makes them take turns.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from fiftyone.core.odm import get_db_conn
from pymongo.errors import DuplicateKeyError

logger = logging.getLogger(__name__)

CLAIMS = "diffuprompter_claims"
WORKERS = "diffuprompter_workers"
LOCKS = "diffuprompter_locks"
LEASE_S = 60.0
"""Seconds a claim, or a worker's record, lasts without a heartbeat
(renewed every third)."""
POLL_S = 0.5
"""Seconds a worker with nothing left to claim waits before it looks again
(for other workers' last claims, taken over when their lease runs out)."""
PENDING, CLAIMED, DONE, FINAL = "pending", "claimed", "done", "final"


class RunInProgressError(RuntimeError):
    """A run was started under a key that live workers are labelling."""


class RunDeletedError(RuntimeError):
    """The run a worker labels was deleted (or replaced under its key)
    meanwhile: the worker stops and writes nothing more."""


RUNS = "runs"
"""FiftyOne's collection of run records (``RunDocument``): a run exists while
a record with its run id in its config does, unless it is being deleted."""
DELETING = "diffuprompter_deleting"
"""The mark :func:`end_run` sets on a run record that is being deleted."""


def run_exists(dataset_id: Any, run_id: str) -> bool:
    """Whether the run ``run_id`` of the dataset ``dataset_id`` still exists
    and is not being deleted: read from the database, not from a process's
    possibly stale dataset."""
    from bson import ObjectId

    found = {
        "_dataset_id": ObjectId(str(dataset_id)),
        "config.run_id": run_id,
        DELETING: {"$ne": True},
    }
    return _collection(RUNS).count_documents(found, limit=1) > 0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # Mongo stores naive UTC


def _collection(name: str) -> Any:
    return get_db_conn()[name]


def worker_name() -> str:
    """``host:pid:random``: unique per worker, and says where it runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class RunClaims:
    """The claim pool of the brain run ``brain_key`` on ``dataset``, seen by
    one worker.

    Args:
        dataset: the run's dataset.
        brain_key: the run's key.
        run_id: the run's id (its record's ``run_id``).
        lease_s: seconds this worker's claims last without renewal.
        worker: this worker's name (default :func:`worker_name`).
    """

    def __init__(
        self,
        dataset: Any,
        brain_key: str,
        run_id: str,
        lease_s: float = LEASE_S,
        worker: str | None = None,
    ) -> None:
        self.run = run_id
        self.dataset = str(dataset._doc.id)
        self.dataset_name = dataset.name
        self.brain_key = brain_key
        self.lease_s = float(lease_s)
        self.worker = worker or worker_name()
        self.operation: str | None = None
        self.docs = _collection(CLAIMS)
        self.members = _collection(WORKERS)
        self.docs.create_index([("run", 1), ("sample", 1)], unique=True)
        self.docs.create_index([("run", 1), ("state", 1), ("lease", 1)])
        self.members.create_index([("run", 1), ("lease", 1)])
        self.members.create_index([("dataset", 1), ("key", 1), ("lease", 1)])

    def exists(self) -> bool:
        """Whether this run still exists (see :func:`run_exists`)."""
        return run_exists(self.dataset, self.run)

    def check_exists(self) -> None:
        """Raises :class:`RunDeletedError` when this run no longer exists."""
        if not self.exists():
            raise RunDeletedError(
                f"Brain run '{self.brain_key}' (run id {self.run}) of dataset "
                f"'{self.dataset_name}' was deleted while this worker labelled it: "
                "the worker stopped and wrote nothing more"
            )

    def _lease(self) -> dt.datetime:
        return _now() + dt.timedelta(seconds=self.lease_s)

    def live_workers(self, key_wide: bool = False) -> list[str]:
        """The names of the run's live workers: those whose record's lease
        has not run out (``key_wide``: of any run under this key, such as a
        deleted run's last workers). A worker found dead on this host (its
        process is gone) has its record and claims expired first."""
        which = {"dataset": self.dataset, "key": self.brain_key} if key_wide else {"run": self.run}
        found = [d["_id"] for d in self.members.find({**which, "lease": {"$gt": _now()}})]
        dead = [worker for worker in found if _dead_here(worker)]
        if dead:
            self.members.update_many({"_id": {"$in": dead}}, {"$set": {"lease": _now()}})
            self.docs.update_many(
                {"worker": {"$in": dead}, "state": CLAIMED}, {"$set": {"lease": _now()}}
            )
        return [worker for worker in found if worker not in dead]

    def dead_workers(self) -> dict[str, str | None]:
        """``{worker: the delegated operation it ran as (None: an SDK call)}``
        of the run's workers that died: their record's lease ran out."""
        self.live_workers()  # expires the records of workers dead here
        found = self.members.find({"run": self.run, "lease": {"$lte": _now()}})
        return {d["_id"]: d["operation"] for d in found}

    def forget(self, workers: Sequence[str]) -> None:
        """Removes the records of dead ``workers``."""
        self.members.delete_many({"_id": {"$in": list(workers)}, "lease": {"$lte": _now()}})

    def start(self, sample_ids: Sequence[str]) -> None:
        """Makes ``sample_ids`` the pool of a new pass of the run.

        Raises:
            RunInProgressError: other live workers are labelling this run.
        """
        self.refuse_if_running()
        self.docs.delete_many({"run": self.run})
        if sample_ids:
            self.docs.insert_many(
                [
                    {"run": self.run, "dataset": self.dataset, "sample": s, "state": PENDING}
                    for s in sample_ids
                ],
                ordered=False,
            )

    def refuse_if_running(self) -> None:
        """Raises :class:`RunInProgressError` when live workers other than
        this one label a run under this key (this run, or one deleted or
        renamed whose workers have not stopped yet)."""
        others = sorted(set(self.live_workers(key_wide=True)) - {self.worker})
        if others:
            raise RunInProgressError(
                f"Brain run '{self.brain_key}' is being labelled right now by workers "
                f"{others}. Wait for them to finish (pseudo_labels_status() shows progress), "
                f"or, if they died, start again once their lease of {self.lease_s:g} s has "
                "run out."
            )

    def _free(self) -> dict[str, Any]:
        """The filter of samples free to claim: pending, or claimed by a
        worker whose lease ran out."""
        return {
            "run": self.run,
            "$or": [{"state": PENDING}, {"state": CLAIMED, "lease": {"$lte": _now()}}],
        }

    def claim_size(self, batch_size: int) -> int:
        """How many samples to claim: ``batch_size``, or fewer as the pool
        empties, at most half of the free samples' share per live worker,
        so that the last claims are small and all workers end together."""
        free = self.docs.count_documents(self._free())
        workers = len(set(self.live_workers()) | {self.worker})
        return max(1, min(batch_size, math.ceil(free / (2 * workers))))

    def claim(self, n: int) -> list[str]:
        """Claims up to ``n`` pending samples, or ones whose lease ran out,
        for this worker; returns their ids (empty when none is free)."""
        free = self._free()
        candidates = [d["sample"] for d in self.docs.find(free, {"sample": 1}).limit(n)]
        if not candidates:
            return []
        token = uuid.uuid4().hex
        self.docs.update_many(
            {**free, "sample": {"$in": candidates}},
            {
                "$set": {
                    "state": CLAIMED,
                    "worker": self.worker,
                    "token": token,
                    "lease": self._lease(),
                }
            },
        )
        return [d["sample"] for d in self.docs.find({"run": self.run, "token": token})]

    def batches(self, batch_size: int) -> Iterator[list[str]] | None:
        """Batches of up to ``batch_size`` sample ids claimed for this worker
        (see :meth:`claim_size`): the first claimed now, each next one only
        when the consumer asks for it, until no sample is free; None when
        none is free now."""
        first = self.claim(self.claim_size(batch_size))
        if not first:
            return None

        def claimed() -> Iterator[list[str]]:
            ids = first
            while ids:
                yield ids
                ids = self.claim(self.claim_size(batch_size))

        return claimed()

    def renew(self) -> None:
        """Extends the lease of this worker's record and claims; writes the
        record anew if it was forgotten meanwhile (a worker that was only
        paused comes back into view)."""
        self.members.replace_one(
            {"_id": self.worker},
            {
                "run": self.run,
                "dataset": self.dataset,
                "key": self.brain_key,
                "operation": self.operation,
                "lease": self._lease(),
            },
            upsert=True,
        )
        self.docs.update_many(
            {"run": self.run, "worker": self.worker, "state": CLAIMED},
            {"$set": {"lease": self._lease()}},
        )

    def done(self, sample_ids: Sequence[str]) -> None:
        """Marks this worker's claims of ``sample_ids`` done."""
        self.docs.update_many(
            {
                "run": self.run,
                "worker": self.worker,
                "state": CLAIMED,
                "sample": {"$in": list(sample_ids)},
            },
            {"$set": {"state": DONE, "lease": None}},
        )

    def release(self) -> None:
        """Gives this worker's unfinished claims back to the pool."""
        self.docs.update_many(
            {"run": self.run, "worker": self.worker, "state": CLAIMED},
            {"$set": {"state": PENDING, "worker": None, "lease": None}},
        )

    def counts(self) -> dict[str, int]:
        """``{"pending", "claimed", "stale", "done"}`` sample counts of the
        pool (stale: claimed by a worker whose lease ran out)."""
        now = _now()
        counts = dict.fromkeys(("pending", "claimed", "stale", "done"), 0)
        for doc in self.docs.find(
            {"run": self.run, "state": {"$ne": FINAL}}, {"state": 1, "lease": 1}
        ):
            state = doc["state"]
            if state == CLAIMED and doc["lease"] <= now:
                state = "stale"
            counts[state] += 1
        return counts

    def done_count(self) -> int:
        """Samples of the pool done."""
        return self.docs.count_documents({"run": self.run, "state": DONE})

    def outstanding(self) -> int:
        """Samples of the pool not done yet (pending or claimed)."""
        return self.docs.count_documents({"run": self.run, "state": {"$in": [PENDING, CLAIMED]}})

    def elect_finaliser(self) -> bool:
        """True for exactly one caller once the pool is done: the worker that
        saves the run's results and then empties the pool."""
        try:
            self.docs.insert_one(
                {"run": self.run, "dataset": self.dataset, "sample": None, "state": FINAL}
            )
        except DuplicateKeyError:
            return False
        return True

    def close(self) -> None:
        """Removes the pool of a finished pass (or of a deleted run)."""
        self.docs.delete_many({"run": self.run})

    @contextlib.contextmanager
    def joined(self, operation: str | None = None) -> Iterator[None]:
        """This worker, a member of the run while the block runs: its record
        names the delegated ``operation`` it runs as, and a heartbeat renews
        the record's and the claims' leases every third of a lease. On
        leaving, unfinished claims go back to the pool if the block raised,
        and the record is removed; a worker that dies leaves it behind."""
        self.operation = operation
        self.renew()
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.lease_s / 3):
                try:
                    self.renew()
                except Exception as e:  # e.g. a failover: keep beating
                    logger.warning("Could not renew the leases of %s: %s", self.worker, e)

        thread = threading.Thread(target=beat, name="diffuprompter-lease", daemon=True)
        thread.start()
        try:
            yield
        except BaseException:
            self.release()
            raise
        finally:
            stop.set()
            thread.join()
            self.members.delete_one({"_id": self.worker})


def end_run(run_id: str) -> None:
    """Ends the run ``run_id`` as it is deleted: marks its record, so that
    its workers stop before their next write (see :func:`run_exists`), and
    removes its claims and worker records."""
    _collection(RUNS).update_many({"config.run_id": run_id}, {"$set": {DELETING: True}})
    _collection(CLAIMS).delete_many({"run": run_id})
    _collection(WORKERS).delete_many({"run": run_id})


def cleanup_claims() -> dict[str, int]:
    """Removes orphan claims and worker records: those of runs or datasets
    that no longer exist (FiftyOne deletes a dataset's runs without their
    cleanup, and a run deleted while its workers ran may leave a last
    claim). Any process may call it at any time: a live run's claims are
    never touched. :func:`~diffuprompter_plugin.labelling.pseudo_labels_status`
    and the start of every run call it.

    Returns:
        ``{"claims": n, "workers": n}`` documents removed.
    """
    claims, members, runs = _collection(CLAIMS), _collection(WORKERS), _collection(RUNS)
    orphans = [
        run
        for run in set(claims.distinct("run")) | set(members.distinct("run"))
        if runs.count_documents({"config.run_id": run}, limit=1) == 0
    ]
    removed = {"claims": 0, "workers": 0}
    if orphans:
        removed["claims"] = claims.delete_many({"run": {"$in": orphans}}).deleted_count
        removed["workers"] = members.delete_many({"run": {"$in": orphans}}).deleted_count
    if any(removed.values()):
        logger.info("Removed %d orphan claims and %d worker records", *removed.values())
    return removed


def _dead_here(worker: str) -> bool:
    """True when ``worker`` ran on this host and its process is gone."""
    host, pid, _ = worker.rsplit(":", 2)
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextlib.contextmanager
def schema_lock(dataset: Any, timeout_s: float = 60.0) -> Iterator[None]:
    """Holds the dataset's field-declaration lock, shared by all processes;
    reloads the dataset inside it, so declarations see every other's."""
    locks = _collection(LOCKS)
    key = f"schema:{dataset._doc.id}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            locks.insert_one({"_id": key, "until": _now() + dt.timedelta(seconds=timeout_s)})
            break
        except DuplicateKeyError:
            locks.delete_one({"_id": key, "until": {"$lte": _now()}})  # its holder died
        if time.monotonic() > deadline:
            raise TimeoutError(f"Field declarations of dataset '{dataset.name}' are locked")
        time.sleep(0.05)
    try:
        dataset.reload()
        yield
    finally:
        locks.delete_one({"_id": key})
