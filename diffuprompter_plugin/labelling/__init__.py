"""Labelling a collection: start, resume, queue and finish a DiffuPrompter
brain run.

Each public function is a straight line over a :class:`~.run.Run`: build the
run's record (:mod:`.record`), check it (:mod:`.checks`), begin it, label
its samples (streamed to the dataset by :mod:`.writer`) and finish it.
Everything a run needs is checked before the run is registered or a field
declared, so a refused run leaves nothing behind; a run interrupted at any
point resumes with :func:`resume_pseudo_labels` (or the same
:func:`compute_pseudo_labels` call), computing only the samples it lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..brain import PseudoLabelsResults, stored_config
from ..claims import LEASE_S, RunDeletedError
from ..engine.config import DiffuPrompterConfig
from ..run_args import DEFAULT_RUN_ARGS, RunArgs, takes_run_args
from .checks import (
    WORKER_OPERATOR,
    check_batch_size,
    check_persistent,
    check_queueable,
    check_runtime_settings,
    check_worker_count,
    check_workers_can_label,
)
from .record import heatmap_root, new_record, resumed_record, settings_applied
from .run import Run

__all__ = [
    "WORKER_OPERATOR",
    "check_batch_size",
    "check_persistent",
    "compute_pseudo_labels",
    "heatmap_root",
    "label_queued_samples",
    "pseudo_labels_status",
    "queue_pseudo_labels",
    "resume_pseudo_labels",
    "start_pseudo_labels",
]


@takes_run_args
def compute_pseudo_labels(
    samples: Any,
    brain_key: str,
    run_args: RunArgs,
    config: DiffuPrompterConfig | Mapping[str, Any] | None = None,
    model: Any = None,
    output_dir: str | None = None,
    batch_size: int = 16,
    smoke: bool = False,
    progress: bool | Callable | None = None,
) -> PseudoLabelsResults:
    """Runs DiffuPrompter on a collection and stores heatmaps and instances.

    Re-running with the same ``brain_key`` resumes: samples that already have
    instances are skipped, failed and unprocessed ones are (re)computed.

    Args:
        samples: a dataset or view.
        brain_key: the run's key (a Python identifier).
        classes: class names applied to every sample.
        class_field: a Classification(s) field giving each sample's classes;
            exactly one of ``classes`` and ``class_field`` is required.
        pred_field: ``fo.Detections`` field for the instances.
        heatmap_field: prefix of the per-class ``fo.Heatmap`` fields
            (``<prefix>_<class>``).
        sd_model, sam_model, sam_checkpoint, device: as in
            :meth:`DiffuPrompter.from_pretrained`; defaults SD v1.5, vit_h.
            (These eight are the :class:`~diffuprompter_plugin.run_args.RunArgs`
            that every way of starting a run shares.)
        config: method settings (a config or its dict).
        model: an already-built ``DiffuPrompter`` (models args then unused).
        output_dir: folder for heatmap PNGs (default under FiftyOne's
            dataset dir).
        batch_size: samples written to the database per batch.
        smoke: marks the run as made with tiny random-weight models.
        progress: FiftyOne progress option (bool or callback of a ProgressBar).

    Returns:
        the run's :class:`PseudoLabelsResults`.
    """
    record = new_record(samples, brain_key, run_args, config, model, output_dir, smoke)
    return Run(samples, brain_key, record).compute(model, batch_size, progress, run_args.device)


def resume_pseudo_labels(
    samples: Any,
    brain_key: str,
    model: Any = None,
    device: str | None = None,
    batch_size: int = 16,
    progress: bool | Callable | None = None,
    **runtime_settings: Any,
) -> PseudoLabelsResults:
    """Finishes an interrupted run with its stored classes, fields, models
    and settings: only the samples without instances are computed.

    Args:
        samples: the dataset or view of the run.
        brain_key: an existing DiffuPrompter run.
        model: an already-built ``DiffuPrompter``; required when the run was
            made with one, since its models are then not on record. Its
            config must match the run's, but for ``runtime_settings``, which
            are applied to it for this call only.
        device, batch_size, progress: as in :func:`compute_pseudo_labels`.
        **runtime_settings: new values of the settings that never change
            results (``loop_batch_size``, ``crf_workers``).

    Returns:
        the run's :class:`PseudoLabelsResults`.
    """
    stored = stored_config(samples, brain_key)
    check_runtime_settings(runtime_settings)
    with settings_applied(model, runtime_settings):
        record = resumed_record(stored, model, runtime_settings)
        return Run(samples, brain_key, record).compute(model, batch_size, progress, device)


@takes_run_args
def queue_pseudo_labels(
    samples: Any,
    brain_key: str,
    workers: int = 1,
    run_args: RunArgs = DEFAULT_RUN_ARGS,
    config: DiffuPrompterConfig | Mapping[str, Any] | None = None,
    output_dir: str | None = None,
    batch_size: int = 4,
    smoke: bool = False,
    lease_s: float = LEASE_S,
) -> list[Any]:
    """Queues a run for ``workers`` delegated operations to share: any
    ``fiftyone delegated launch`` process on a machine that reaches this
    database (``FIFTYONE_DATABASE_URI``) may execute each of them.

    The run is checked, registered and its fields declared here, once; its
    pending samples go to a claim pool (:mod:`~diffuprompter_plugin.claims`) from which every
    operation takes up to ``batch_size`` samples at a time, so that no
    sample is labelled twice and a dead worker's samples are taken again
    after ``lease_s`` seconds. The operation that ends last saves the
    results. A key that is queued already resumes: only samples without
    instances are computed. The arguments are those of
    :func:`compute_pseudo_labels` (models are loaded by each worker, on its
    ``device``).

    What would make every worker fail is refused here, before anything is
    written or queued: a heatmap folder that cannot be written, model
    weights that cannot be had, and (when the Stable Diffusion tokenizer
    is on this machine) class prompts too long for the text encoder. These
    are checked on this machine: workers on others must see the same
    paths.

    Returns:
        the ``ExecutionResult`` of each queued operation (``.result["id"]``).

    Raises:
        RunInProgressError: workers are labelling this run now.
        ModelUnavailableError: the run's weights cannot be found.
        ValueError: bad arguments, a dataset that is not persistent, this
            plugin not in ``FIFTYONE_PLUGINS_DIR``, an unwritable heatmap
            folder, or a class prompt the text encoder cannot take.
    """
    check_worker_count(workers)
    check_queueable(samples)
    record = new_record(samples, brain_key, run_args, config, None, output_dir, smoke)
    queued = Run(samples, brain_key, record, lease_s)
    pending = queued.pending()
    if pending:
        check_workers_can_label(record)
    queued.begin(pending)
    params = {
        "brain_key": brain_key,
        "run_id": record.run_id,
        "batch_size": batch_size,
        "lease_s": lease_s,
    }
    if run_args.device is not None:
        params["device"] = run_args.device
    return _queue_operations(samples, params, workers)


def start_pseudo_labels(
    samples: Any,
    brain_key: str,
    workers: int = 1,
    progress: bool | Callable | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Labels the collection here (``workers`` = 1, :func:`compute_pseudo_labels`)
    or queues it for ``workers`` delegated workers (:func:`queue_pseudo_labels`),
    as the App's run form does; ``kwargs`` are their shared arguments.

    Returns:
        the finished run's :meth:`PseudoLabelsResults.summary`, or
        ``{"brain_key": ..., "queued": [operation ids]}``.
    """
    if workers > 1:
        queued = queue_pseudo_labels(samples, brain_key, workers, **kwargs)
        return {"brain_key": brain_key, "queued": [q.result["id"] for q in queued]}
    return compute_pseudo_labels(samples, brain_key, progress=progress, **kwargs).summary()


def label_queued_samples(
    samples: Any,
    brain_key: str,
    device: str | None = None,
    batch_size: int = 4,
    lease_s: float = LEASE_S,
    operation: str | None = None,
    progress: bool | Callable | None = None,
    run_id: str | None = None,
) -> PseudoLabelsResults:
    """One worker's share of a run queued by :func:`queue_pseudo_labels`:
    claims and labels samples until none is left. Each delegated operation
    of the run calls it, with its own id as ``operation``: the worker joins
    the run under it before loading the models, so that
    :func:`pseudo_labels_status` can name the operation if it dies.

    ``run_id`` is the id of the run it was queued for: a run since deleted,
    or replaced by another under the same key, is not labelled. A worker
    whose run is deleted while it labels stops before its next write.

    Returns:
        the run's results; complete when this worker ended last, and then
        saved with the run.

    Raises:
        RunDeletedError: the run was deleted (before or while it labelled).
    """
    samples._dataset.reload()  # a long-lived worker sees the fields declared since
    share = Run.stored(samples, brain_key, lease_s)
    if run_id is not None and share.record.run_id != run_id:
        raise RunDeletedError(
            f"Brain run '{brain_key}' (run id {run_id}) this worker was queued for was "
            "deleted; the key now names another run"
        )
    with share.claims.joined(operation):
        if share.claims.outstanding() == 0:  # started after the run ended: no models needed
            return share.finish(share.claims.elect_finaliser())
        model = share.record.load_model(device)
        return share.label(model, batch_size, progress)


def pseudo_labels_status(samples: Any, brain_key: str) -> dict[str, Any]:
    """The overall progress of run ``brain_key`` on ``samples``, however many
    workers share it, and the delegated operations whose worker died.

    FiftyOne keeps a dead worker's operation RUNNING forever; its samples
    are taken again by the other workers once its lease runs out (or by a
    resume). Such operations are listed, with a warning that gives the
    command that marks them failed: ``fiftyone delegated fail ID ...``.
    Dead workers whose operations FiftyOne no longer runs are forgotten.

    Counts are exact (never MongoDB's estimated count, which can be wrong
    after a restart). The call also removes orphan claims (see
    :func:`~diffuprompter_plugin.claims.cleanup_claims`).

    Returns:
        ``{"total", "done", "failed", "claimed", "stale", "pending",
        "workers", "dead_operations", "lost_heatmaps"}``: sample counts
        (done: with instances; failed: with an error only; claimed: held by
        live workers; stale: held by workers whose lease ran out, taken
        again by the next worker or resume; pending: the rest), the number
        of live workers, the ids of the run's RUNNING operations whose
        worker died, and the number of done samples whose heatmap files are
        gone (a resume computes them again).
    """
    return Run.stored(samples, brain_key).status()


def _queue_operations(samples: Any, params: dict[str, Any], workers: int) -> list[Any]:
    """Queues ``workers`` delegated operations of :data:`WORKER_OPERATOR`
    with ``params``, each told its part (``1/4``...)."""
    import fiftyone.operators as foo

    return [
        foo.execute_operator(
            WORKER_OPERATOR,
            ctx={"view": samples.view(), "params": {**params, "part": f"{i + 1}/{workers}"}},
            request_delegation=True,
        )
        for i in range(workers)
    ]
