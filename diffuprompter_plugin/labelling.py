"""Labelling a collection: start, resume and finish a DiffuPrompter brain run.

Everything a run needs is checked before the run is registered or a field
declared, so a refused run leaves nothing behind; a run interrupted at any
point resumes with :func:`resume_pseudo_labels` (or the same
:func:`compute_pseudo_labels` call), computing only the samples it lacks.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import fiftyone as fo
import fiftyone.core.utils as fou

from .brain import PREBUILT, PseudoLabelsConfig, PseudoLabelsResults, stored_config
from .claims import LEASE_S, RunClaims, schema_lock, work
from .engine.config import (
    DEFAULT_HEATMAP_FIELD,
    DEFAULT_PRED_FIELD,
    DEFAULT_SAM_MODEL,
    DEFAULT_SD_MODEL,
    RUNTIME_SETTINGS,
    DiffuPrompterConfig,
    model_source,
)
from .labels import (
    class_slug,
    heatmap_fields,
    sample_classes,
    sample_image,
    to_detections,
    write_heatmap,
)

logger = logging.getLogger(__name__)

WORKER_OPERATOR = "@diffuprompter/diffuprompter/label_queued_samples"
"""The delegated operation that runs :func:`label_queued_samples`."""


def compute_pseudo_labels(
    samples: Any,
    brain_key: str,
    classes: Sequence[str] | None = None,
    class_field: str | None = None,
    pred_field: str = DEFAULT_PRED_FIELD,
    heatmap_field: str = DEFAULT_HEATMAP_FIELD,
    sd_model: Any = None,
    sam_model: Any = None,
    sam_checkpoint: str | None = None,
    device: str | None = None,
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
    run_config = _new_run_config(
        samples,
        brain_key,
        classes,
        class_field,
        pred_field,
        heatmap_field,
        _settings_and_models(config, model, sd_model, sam_model, sam_checkpoint),
        output_dir,
        smoke,
    )
    return _run(samples, brain_key, run_config, model, batch_size, progress, device)


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
    changed = sorted(set(runtime_settings) - set(RUNTIME_SETTINGS))
    if changed:
        raise ValueError(
            f"A resumed run keeps its settings; only {list(RUNTIME_SETTINGS)} may change, "
            f"not {changed}"
        )
    run_config = stored.copy()
    if model is None:
        run_config.settings = {**stored.settings, **runtime_settings}
        return _run(samples, brain_key, run_config, model, batch_size, progress, device)
    with _settings_applied(model, runtime_settings):
        config, run_config.models = _settings_and_models(None, model, None, None, None)
        run_config.settings = config.to_dict()
        return _run(samples, brain_key, run_config, model, batch_size, progress)


def queue_pseudo_labels(
    samples: Any,
    brain_key: str,
    workers: int = 1,
    classes: Sequence[str] | None = None,
    class_field: str | None = None,
    pred_field: str = DEFAULT_PRED_FIELD,
    heatmap_field: str = DEFAULT_HEATMAP_FIELD,
    sd_model: Any = None,
    sam_model: Any = None,
    sam_checkpoint: str | None = None,
    device: str | None = None,
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
    pending samples go to a claim pool (:mod:`.claims`) from which every
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
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, not {workers!r}")
    _check_queueable(samples)
    run_config = _new_run_config(
        samples,
        brain_key,
        classes,
        class_field,
        pred_field,
        heatmap_field,
        _settings_and_models(config, None, sd_model, sam_model, sam_checkpoint),
        output_dir,
        smoke,
    )
    claims = RunClaims(samples._dataset, brain_key, lease_s)
    pending = _pending(samples, brain_key, run_config, claims)
    if pending:
        _check_workers_can_label(run_config)
    _begin(samples, brain_key, run_config, pending, claims)
    import fiftyone.operators as foo

    params = {"brain_key": brain_key, "batch_size": batch_size, "lease_s": lease_s}
    if device is not None:
        params["device"] = device
    return [
        foo.execute_operator(
            WORKER_OPERATOR,
            ctx={"view": samples.view(), "params": {**params, "part": f"{i + 1}/{workers}"}},
            request_delegation=True,
        )
        for i in range(workers)
    ]


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
) -> PseudoLabelsResults:
    """One worker's share of a run queued by :func:`queue_pseudo_labels`:
    claims and labels samples until none is left. Each delegated operation
    of the run calls it, with its own id as ``operation``: the worker joins
    the run under it before loading the models, so that
    :func:`pseudo_labels_status` can name the operation if it dies.

    Returns:
        the run's results; complete when this worker ended last, and then
        saved with the run.
    """
    samples._dataset.reload()  # a long-lived worker sees the fields declared since
    run_config = stored_config(samples, brain_key)
    claims = RunClaims(samples._dataset, brain_key, lease_s)
    with claims.joined(operation):
        if claims.outstanding() == 0:  # started after the run ended: no models needed
            return _finish(samples, brain_key, run_config, claims, claims.elect_finaliser())
        model = run_config.load_model(device)
        return _label_claimed(samples, brain_key, run_config, model, batch_size, progress, claims)


def pseudo_labels_status(samples: Any, brain_key: str) -> dict[str, Any]:
    """The overall progress of run ``brain_key`` on ``samples``, however many
    workers share it, and the delegated operations whose worker died.

    FiftyOne keeps a dead worker's operation RUNNING forever; its samples
    are taken again by the other workers once its lease runs out (or by a
    resume). Such operations are listed, with a warning that gives the
    command that marks them failed: ``fiftyone delegated fail ID ...``.
    Dead workers whose operations FiftyOne no longer runs are forgotten.

    Returns:
        ``{"total", "done", "failed", "claimed", "stale", "pending",
        "workers", "dead_operations"}``: sample counts (done: with
        instances; failed: with an error only; claimed: held by live
        workers; stale: held by workers whose lease ran out, taken again by
        the next worker or resume; pending: the rest), the number of live
        workers, and the ids of the run's RUNNING operations whose worker
        died.
    """
    config = stored_config(samples, brain_key)
    claims = RunClaims(samples._dataset, brain_key)
    workers = claims.live_workers()
    pool = claims.counts()
    total = len(samples)
    done = samples.exists(config.pred_field).count()
    failed = samples.exists(config.pred_field, False).exists(config.error_field).count()
    busy = pool["claimed"] + pool["stale"]
    return {
        "total": total,
        "done": done,
        "failed": failed,
        "claimed": pool["claimed"],
        "stale": pool["stale"],
        "pending": max(total - done - failed - busy, 0),
        "workers": len(workers),
        "dead_operations": _dead_operations(claims),
    }


def _dead_operations(claims: RunClaims) -> list[str]:
    """The ids of the run's operations that FiftyOne runs but whose worker
    died, with a warning on how to mark them failed; forgets the other
    dead workers."""
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionRunState

    service = DelegatedOperationService()
    running, forgotten = [], []
    for worker, operation in claims.dead_workers().items():
        state = None
        if operation is not None:
            with contextlib.suppress(ValueError):  # a deleted operation
                state = service.get(ObjectId(operation)).run_state
        if state == ExecutionRunState.RUNNING:
            running.append(operation)
        else:
            forgotten.append(worker)
    claims.forget(forgotten)
    if running:
        logger.warning(
            "The workers of %d operations of run '%s' died; FiftyOne keeps the operations "
            "RUNNING. Mark them failed with: fiftyone delegated fail %s",
            len(running),
            claims.brain_key,
            " ".join(sorted(running)),
        )
    return sorted(running)


@contextlib.contextmanager
def _settings_applied(model: Any, settings: Mapping[str, Any]) -> Iterator[None]:
    """Runs the block with ``settings`` applied to ``model.config``, then
    gives the caller's model its own config back."""
    own = model.config
    model.config = own.replace(**settings)
    try:
        yield
    finally:
        model.config = own


def _run(samples, brain_key, run_config, model, batch_size, progress, device=None):
    """Registers (or resumes) the run, annotates its pending samples and
    stores the results; everything is checked, and the model loaded, before
    anything is written."""
    check_batch_size(batch_size)
    claims = RunClaims(samples._dataset, brain_key)
    pending = _pending(samples, brain_key, run_config, claims)
    if pending:
        _check_writable(run_config.heatmap_dir)
        model = run_config.load_model(device, model)  # fails before anything is written
    _begin(samples, brain_key, run_config, pending, claims)
    with claims.joined():
        return _label_claimed(samples, brain_key, run_config, model, batch_size, progress, claims)


def _pending(samples, brain_key, run_config, claims) -> list[str]:
    """Checks that the run may start (or resume) and returns the ids of the
    samples it must compute; refuses a key that workers are labelling."""
    run_config.build()
    claims.refuse_if_running()
    if brain_key in samples.list_brain_runs():
        _check_resumable(samples, brain_key, run_config)
        return samples.exists(run_config.pred_field, False).values("id")
    _check_new_fields(samples, run_config)
    return samples.values("id")


def _begin(samples, brain_key, run_config, pending, claims) -> None:
    """Registers the run (unless it resumes), declares its fields and fills
    its claim pool with ``pending``."""
    if brain_key not in samples.list_brain_runs():
        run_config.build().register_run(samples, brain_key, overwrite=False)
    _declare_fields(samples, run_config)
    claims.start(pending)


def _label_claimed(samples, brain_key, run_config, model, batch_size, progress, claims):
    """Labels samples claimed from the run's pool until it is done; the
    worker that ends last saves the results and empties the pool. Runs
    inside :meth:`RunClaims.joined`."""
    with fou.ProgressBar(total=sum(claims.counts().values()), progress=progress) as pb:
        label = partial(_annotate_batches, samples, model, run_config)
        finaliser = work(claims, label, batch_size, pb.set_iteration)
        pb.set_iteration(pb.total)  # work ends when no sample is left to any worker
    return _finish(samples, brain_key, run_config, claims, finaliser)


def _finish(samples, brain_key, run_config, claims, finaliser: bool) -> PseudoLabelsResults:
    """The run's results; the ``finaliser`` saves them and empties the pool."""
    method = run_config.build()
    results = _collect_results(samples, brain_key, run_config, method)
    if finaliser:
        samples._dataset.reload()
        method.save_run_results(samples, brain_key, results)
        claims.close()
    if results.failures:
        logger.warning("%d samples failed; see results.failures", len(results.failures))
    return results


def _new_run_config(
    samples,
    brain_key,
    classes,
    class_field,
    pred_field,
    heatmap_field,
    settings_models,
    output_dir,
    smoke,
) -> PseudoLabelsConfig:
    """The checked config of a new run (or of the resumed run ``brain_key``)."""
    names = _class_names(samples, classes, class_field)
    for name in (brain_key, pred_field, heatmap_field):
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"Invalid name {name!r}: use a Python identifier")
    settings, models = settings_models
    existing = (
        stored_config(samples, brain_key) if brain_key in samples.list_brain_runs() else None
    )
    if existing is not None and output_dir is None:
        heatmap_dir = existing.heatmap_dir  # the run's own folder, wherever it was made
    else:
        heatmap_dir = _heatmap_dir(samples, brain_key, output_dir)
    return PseudoLabelsConfig(
        pred_field=pred_field,
        heatmap_fields=heatmap_fields(names, heatmap_field),
        error_field=f"{pred_field}_error",
        heatmap_dir=heatmap_dir,
        classes=names if classes is not None else None,
        class_field=class_field,
        settings=settings.to_dict(),
        models=models,
        smoke=smoke,
    )


def _class_names(samples: Any, classes: Sequence[str] | None, class_field: str | None):
    if (classes is None) == (class_field is None):
        raise ValueError("Give exactly one of classes (a list) and class_field")
    if classes is not None:
        from .engine.pipeline import validate_class_names

        return validate_class_names(classes)
    return _classes_in_field(samples, class_field)


def _settings_and_models(config, model, sd_model, sam_model, sam_checkpoint):
    """The method settings and the record of which models label the run: a
    model from ``from_pretrained`` brings the ids and paths it was loaded
    from (``sources``); a part built otherwise is recorded as ``PREBUILT``."""
    if model is not None:
        sources = getattr(model, "sources", None) or {}
        if not sources.get("sd_model") and not sources.get("sam_model"):
            return model.config, {"sd_model": type(model).__name__, "sam_model": PREBUILT}
        return model.config, {
            "sd_model": sources.get("sd_model") or PREBUILT,
            "sam_model": sources.get("sam_model") or PREBUILT,
            "sam_checkpoint": sources.get("sam_checkpoint"),
        }
    if not isinstance(config, DiffuPrompterConfig):
        config = DiffuPrompterConfig.from_dict(dict(config or {}))
    return config, {
        "sd_model": model_source(sd_model or DEFAULT_SD_MODEL),
        "sam_model": model_source(sam_model or DEFAULT_SAM_MODEL),
        "sam_checkpoint": model_source(sam_checkpoint),
    }


def heatmap_root(samples: Any, output_dir: str | None = None) -> str:
    """The folder of a dataset's heatmaps: ``output_dir``, or FiftyOne's
    dataset dir, then ``__diffuprompter__/<dataset id>``. The id never
    changes and is never reused, so renamed datasets, or names that simplify
    alike (``p7-a``, ``p7(a)``), never share heatmaps."""
    root = output_dir or os.path.join(fo.config.default_dataset_dir, "__diffuprompter__")
    return os.path.abspath(os.path.join(root, str(samples._dataset._doc.id)))


def _heatmap_dir(samples: Any, brain_key: str, output_dir: str | None) -> str:
    return os.path.join(heatmap_root(samples, output_dir), brain_key)


def check_persistent(samples: Any) -> None:
    """Raises ValueError unless ``samples`` belong to a persistent dataset:
    delegated workers are other processes, which load it by name, and
    FiftyOne deletes a non-persistent dataset when this process exits."""
    dataset = samples._dataset
    if not dataset.persistent:
        raise ValueError(
            f"Dataset '{dataset.name}' is not persistent, so it is deleted when this "
            "process exits, before a worker runs the job: set dataset.persistent = True first"
        )


def _check_queueable(samples: Any) -> None:
    """Raises ValueError when no worker could take the queued operations: a
    dataset that is not persistent, or this plugin not found by FiftyOne."""
    import fiftyone.operators as foo

    check_persistent(samples)
    try:
        foo.get_operator(WORKER_OPERATOR)
    except ValueError as e:
        raise ValueError(
            f"FiftyOne does not find the operator {WORKER_OPERATOR} that the workers run: "
            "put this plugin in FIFTYONE_PLUGINS_DIR, here and on the workers' machines "
            "(see the README's GPU workers section)"
        ) from e


def check_batch_size(batch_size: Any) -> None:
    """Raises ValueError unless ``batch_size`` is an integer >= 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, not {batch_size!r}")


def _check_workers_can_label(run_config: PseudoLabelsConfig) -> None:
    """Raises what would make every worker of a queued run fail, found on
    this machine without loading the models: see :func:`queue_pseudo_labels`."""
    from .engine.errors import ModelUnavailableError
    from .engine.pipeline import check_prompts
    from .engine.weights import missing_weights

    _check_writable(run_config.heatmap_dir)
    models = run_config.models
    missing = missing_weights(models["sd_model"], models["sam_model"], models["sam_checkpoint"])
    if missing:
        raise ModelUnavailableError(
            "The workers could not load the run's models:\n- " + "\n- ".join(missing)
        )
    template = run_config.engine_config().template
    if not check_prompts(models["sd_model"], template, list(run_config.heatmap_fields)):
        logger.info(
            "The tokenizer of '%s' is not on this machine: the workers check the class "
            "prompts when they load it",
            models["sd_model"],
        )


def _check_writable(folder: str) -> None:
    """Raises ValueError unless ``folder`` is, or can be created as, a
    writable folder; creates nothing."""
    path = Path(folder)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(
            f"Cannot write heatmaps to '{folder}': '{existing}' is a file; "
            "choose another output_dir"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"Cannot write heatmaps to '{folder}': '{existing}' is not writable; "
            "choose another output_dir"
        )


def _classes_in_field(samples: Any, class_field: str) -> list[str]:
    field = samples.get_field(class_field)
    if field is None:
        raise ValueError(f"Class field '{class_field}' does not exist")
    doc_type = getattr(field, "document_type", None)
    if doc_type is fo.Classification:
        path = f"{class_field}.label"
    elif doc_type is fo.Classifications:
        path = f"{class_field}.classifications.label"
    else:
        raise ValueError(f"Class field '{class_field}' must be a Classification(s) field")
    names = [n for n in samples.distinct(path) if n]
    if not names:
        raise ValueError(f"Class field '{class_field}' holds no labels")
    return names


def _check_new_fields(samples: Any, config: PseudoLabelsConfig) -> None:
    names = [config.pred_field, config.error_field, *config.heatmap_fields.values()]
    shared = sorted({n for n in names if names.count(n) > 1})
    if shared:
        raise ValueError(
            f"Fields {shared} would hold both a heatmap and the instances or errors "
            f"('{config.pred_field}', '{config.error_field}'): choose another heatmap_field"
        )
    taken = [f for f in config.field_types() if samples._dataset.has_sample_field(f)]
    if taken:
        raise ValueError(f"Fields {taken} already exist; choose other field names or delete them")


def _declare_fields(samples: Any, config: PseudoLabelsConfig) -> None:
    """Declares the run's fields, taking turns with other processes (see
    :func:`.claims.schema_lock`): concurrent declarations would be lost."""
    dataset = samples._dataset
    with schema_lock(dataset):
        for name, label_type in config.field_types().items():
            if dataset.has_sample_field(name):
                continue
            if label_type is None:
                dataset.add_sample_field(name, fo.StringField)
            else:
                dataset.add_sample_field(
                    name, fo.EmbeddedDocumentField, embedded_doc_type=label_type
                )


def _check_resumable(samples: Any, brain_key: str, config: PseudoLabelsConfig) -> None:
    existing = stored_config(samples, brain_key)
    keys = ("pred_field", "heatmap_fields", "heatmap_dir", "classes", "class_field")
    differs = [k for k in keys if getattr(existing, k, None) != getattr(config, k)]
    if (existing.models_recorded or config.models_recorded) and existing.models != config.models:
        differs.append("models")  # two already-built models cannot be compared
    differs += [
        name
        for name, value in config.settings.items()
        if name not in RUNTIME_SETTINGS and existing.settings.get(name) != value
    ]
    if differs:
        raise ValueError(
            f"Brain run '{brain_key}' exists with different {differs}; resume it with "
            "the same settings, use a new brain_key, or delete_brain_run() first"
        )


@dataclass
class _Batch:
    """A claimed batch of sample ids, and how many of its samples that lack
    instances are still being labelled."""

    ids: list[str]
    left: int


def _annotate_batches(
    samples: Any,
    model: Any,
    config: PseudoLabelsConfig,
    batches: Iterable[list[str]],
    done: Callable[[list[str]], None],
) -> None:
    """Annotates the samples of ``batches`` (lists of ids) that lack instances
    as one stream through ``model.annotate_all``, so that its CRF pool serves
    them all and never drains between batches. Results are saved as each
    batch completes, and only then is ``done(ids)`` called, so a batch is
    never reported done before it is in the database; a stream that is
    interrupted saves what it has labelled, which resume then skips."""
    unsaved: list[fo.Sample] = []

    def save() -> None:
        try:
            with samples.save_context() as saver:
                for sample in unsaved:
                    saver.save(sample)
        finally:
            unsaved.clear()  # a failed save is not tried again on the way out

    def store(batch: _Batch, sample: fo.Sample, result: Any) -> None:
        _write(sample, result, config)
        unsaved.append(sample)
        batch.left -= 1
        if batch.left == 0:
            save()
            done(batch.ids)

    def items() -> Iterator[tuple[tuple[_Batch, fo.Sample], str, list[str]]]:
        for ids in batches:
            todo = list(samples.select(ids).exists(config.pred_field, False))
            batch = _Batch(ids, len(todo))
            if not todo:
                done(ids)
            for sample in todo:
                names = config.classes or sample_classes(sample, config.class_field)
                if names:
                    yield (batch, sample), sample_image(sample), names
                else:
                    store(batch, sample, ValueError(f"no class in field '{config.class_field}'"))

    try:
        for (batch, sample), result in model.annotate_all(items()):
            store(batch, sample, result)
    finally:
        save()


def _write(sample: fo.Sample, result: Any, config: PseudoLabelsConfig) -> None:
    """Stores one sample's annotation, or its error."""
    if isinstance(result, Exception):
        _fail(sample, result, config)
        return
    for name, heatmap in result.heatmaps.items():
        path = os.path.join(config.heatmap_dir, class_slug(name), f"{sample.id}.png")
        geotiff = result.heatmap_files.get(name)
        sample[config.heatmap_fields[name]] = write_heatmap(heatmap, path, geotiff)
    height, width = result.image_shape
    try:
        sample[config.pred_field] = to_detections(result.instances, width, height)
    except ValueError as e:  # more instances than a sample can hold
        _fail(sample, e, config)
        return
    sample[config.error_field] = None


def _fail(sample: fo.Sample, error: Exception, config: PseudoLabelsConfig) -> None:
    logger.warning("Sample %s (%s) failed: %s", sample.id, sample.filepath, error)
    sample[config.error_field] = f"{type(error).__name__}: {error}"


def _collect_results(samples, brain_key, config, method) -> PseudoLabelsResults:
    done = samples.exists(config.pred_field)
    failed = samples.exists(config.error_field)
    ids, errors = failed.values(["id", config.error_field])
    return PseudoLabelsResults(
        samples,
        config,
        brain_key,
        processed=done.count(),
        instances=done.count(f"{config.pred_field}.detections"),
        per_class=done.count_values(f"{config.pred_field}.detections.label"),
        failures=dict(zip(ids, errors, strict=True)),
        backend=method,
    )
