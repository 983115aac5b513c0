"""What a run must satisfy before anything of it is written.

Each check raises with a message that names the argument, field, folder or
value at fault, and writes nothing; the entry points of
:mod:`diffuprompter_plugin.labelling` call them before a run is registered
or a field declared.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fiftyone as fo

from ..brain import PseudoLabelsConfig, stored_config
from ..engine.config import RUNTIME_SETTINGS

logger = logging.getLogger(__name__)

WORKER_OPERATOR = "@diffuprompter/diffuprompter/label_queued_samples"
"""The delegated operation that runs :func:`label_queued_samples`."""


def check_batch_size(batch_size: Any) -> None:
    """Raises ValueError unless ``batch_size`` is an integer >= 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, not {batch_size!r}")


def check_worker_count(workers: Any) -> None:
    """Raises ValueError unless ``workers`` (delegated operations) is a
    positive integer."""
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, not {workers!r}")


def check_names(brain_key: Any, **fields: Any) -> None:
    """Raises ValueError unless ``brain_key`` is a Python identifier and each
    of ``fields`` (``{argument: field name}``) is a valid field name (see
    :func:`check_field_name`)."""
    if not isinstance(brain_key, str) or not brain_key.isidentifier():
        raise ValueError(f"Invalid name {brain_key!r}: use a Python identifier")
    for what, name in fields.items():
        check_field_name(name, what)


def check_field_name(name: Any, what: str = "field") -> None:
    """Raises ValueError, naming ``what`` (the argument) and ``name``, unless
    ``name`` is a Python identifier (so no ``.`` or ``$``) that does not start
    with ``_``, which FiftyOne reserves for its own fields (``_id``...)."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise ValueError(
            f"Invalid {what} {name!r}: a field name must be a Python identifier (letters, "
            "digits, '_'; no '.' or '$') that does not start with '_', which FiftyOne "
            "reserves for its own fields"
        )


def checked_class_names(
    samples: Any, classes: Sequence[str] | None, class_field: str | None
) -> list[str]:
    """The run's class names: ``classes``, validated, or the labels of the
    Classification(s) field ``class_field``; exactly one is required."""
    if (classes is None) == (class_field is None):
        raise ValueError("Give exactly one of classes (a list) and class_field")
    if classes is not None:
        from ..engine.class_names import validate_class_names

        return validate_class_names(classes)
    return _classes_in_field(samples, class_field)


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


def check_settings(record: PseudoLabelsConfig) -> None:
    """Raises ValueError unless the run's settings make a valid engine
    config (a resumed run's, with new runtime settings, included)."""
    record.engine_config()


def check_runtime_settings(settings: Mapping[str, Any]) -> None:
    """Raises ValueError unless ``settings`` (new values for a resumed run)
    are all runtime settings, which never change results."""
    changed = sorted(set(settings) - set(RUNTIME_SETTINGS))
    if changed:
        raise ValueError(
            f"A resumed run keeps its settings; only {list(RUNTIME_SETTINGS)} may change, "
            f"not {changed}"
        )


def check_new_fields(samples: Any, record: PseudoLabelsConfig) -> None:
    """Raises ValueError when the fields of a new run would share a name,
    or exist already."""
    names = [record.pred_field, record.error_field, *record.heatmap_fields.values()]
    shared = sorted({n for n in names if names.count(n) > 1})
    if shared:
        raise ValueError(
            f"Fields {shared} would hold both a heatmap and the instances or errors "
            f"('{record.pred_field}', '{record.error_field}'): choose another heatmap_field"
        )
    taken = [f for f in record.field_types() if samples._dataset.has_sample_field(f)]
    if taken:
        raise ValueError(f"Fields {taken} already exist; choose other field names or delete them")


def check_resumable(samples: Any, brain_key: str, record: PseudoLabelsConfig) -> None:
    """Raises ValueError unless ``record`` may resume the stored run
    ``brain_key``: the same fields, folder, classes, models and settings
    (runtime settings aside)."""
    existing = stored_config(samples, brain_key)
    keys = ("pred_field", "heatmap_fields", "heatmap_dir", "classes", "class_field")
    differs = [k for k in keys if getattr(existing, k, None) != getattr(record, k)]
    if (existing.models_recorded or record.models_recorded) and existing.models != record.models:
        differs.append("models")  # two already-built models cannot be compared
    differs += [
        name
        for name, value in record.settings.items()
        if name not in RUNTIME_SETTINGS and existing.settings.get(name) != value
    ]
    if differs:
        raise ValueError(
            f"Brain run '{brain_key}' exists with different {differs}; resume it with "
            "the same settings, use a new brain_key, or delete_brain_run() first"
        )


def check_writable(folder: str) -> None:
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


def check_queueable(samples: Any) -> None:
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


def check_workers_can_label(record: PseudoLabelsConfig) -> None:
    """Raises what would make every worker of a queued run fail, found on
    this machine without loading the models: an unwritable heatmap folder,
    weights that cannot be had, class prompts the text encoder cannot take
    (when its tokenizer is here)."""
    from ..engine.errors import ModelUnavailableError
    from ..engine.pipeline import check_prompts
    from ..engine.weights import missing_weights

    check_writable(record.heatmap_dir)
    models = record.models
    missing = missing_weights(models["sd_model"], models["sam_model"], models["sam_checkpoint"])
    if missing:
        raise ModelUnavailableError(
            "The workers could not load the run's models:\n- " + "\n- ".join(missing)
        )
    template = record.engine_config().template
    if not check_prompts(models["sd_model"], template, list(record.heatmap_fields)):
        logger.info(
            "The tokenizer of '%s' is not on this machine: the workers check the class "
            "prompts when they load it",
            models["sd_model"],
        )
