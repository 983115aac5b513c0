"""DiffuPrompter as a FiftyOne brain method: resumable pseudo-labelling runs.

The config, method and results classes live in this installed module so that
every process (App, delegated workers, notebooks) can load them by full name.
Torch and the models are imported only when a run actually needs them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import fiftyone as fo
import fiftyone.core.brain as fob
import fiftyone.core.utils as fou

from .engine.config import (
    DEFAULT_HEATMAP_FIELD,
    DEFAULT_PRED_FIELD,
    DEFAULT_SAM_MODEL,
    DEFAULT_SD_MODEL,
    RUNTIME_SETTINGS,
    DiffuPrompterConfig,
    check_setting,
)
from .labels import class_slug, read_heatmap, sample_classes, to_detections, write_heatmap

logger = logging.getLogger(__name__)

METHOD = "diffuprompter"
SMOKE_LABEL = "SMOKE TEST: tiny random-weight models, labels are meaningless"
PREBUILT = "prebuilt"
"""The model record of a run given an already-built model."""


class PseudoLabelsConfig(fob.BrainMethodConfig):
    """Settings of a DiffuPrompter brain run, stored with the run.

    Args:
        pred_field: the ``fo.Detections`` instance field.
        heatmap_fields: ``{class name: fo.Heatmap field}``.
        error_field: string field holding a failed sample's error.
        heatmap_dir: folder of the 16-bit heatmap PNGs of this run.
        classes: fixed class names applied to every sample, or None.
        class_field: Classification(s) field giving each sample's classes.
        settings: :meth:`DiffuPrompterConfig.to_dict` of the method.
        models: which Stable Diffusion and SAM produced the labels.
        smoke: True for runs with tiny random-weight models.
    """

    def __init__(
        self,
        pred_field: str,
        heatmap_fields: dict[str, str],
        error_field: str,
        heatmap_dir: str,
        classes: list[str] | None = None,
        class_field: str | None = None,
        settings: dict[str, Any] | None = None,
        models: dict[str, Any] | None = None,
        smoke: bool = False,
        **kwargs: Any,
    ) -> None:
        self.pred_field = pred_field
        self.heatmap_fields = heatmap_fields
        self.error_field = error_field
        self.heatmap_dir = heatmap_dir
        self.classes = classes
        self.class_field = class_field
        self.settings = settings or DiffuPrompterConfig().to_dict()
        self.models = models or {}
        self.smoke = smoke
        super().__init__(**kwargs)

    @property
    def type(self) -> str:
        return "brain"

    @property
    def method(self) -> str:
        return METHOD

    def field_types(self) -> dict[str, Any]:
        """The run's sample fields and their label types (None: a string)."""
        fields = {self.pred_field: fo.Detections, self.error_field: None}
        fields.update(dict.fromkeys(self.heatmap_fields.values(), fo.Heatmap))
        return fields

    def engine_config(self) -> DiffuPrompterConfig:
        """The method settings as the engine's config."""
        return DiffuPrompterConfig.from_dict(self.settings)

    @property
    def models_recorded(self) -> bool:
        """False for a run made with an already-built model: its weights are
        not on record, so resuming it or rerunning SAM needs them passed."""
        return self.models.get("sam_model") != PREBUILT


class PseudoLabels(fob.BrainMethod):
    """The brain method: knows the run's fields and files, and removes them."""

    def get_fields(self, samples: Any, brain_key: str) -> list[str]:
        return list(self.config.field_types())

    def cleanup(self, samples: Any, brain_key: str) -> None:
        dataset = samples._dataset
        fields = [f for f in self.get_fields(samples, brain_key) if dataset.has_sample_field(f)]
        dataset.delete_sample_fields(fields, error_level=1)
        shutil.rmtree(self.config.heatmap_dir, ignore_errors=True)

    def _validate_run(self, samples: Any, brain_key: str, existing_info: Any) -> None:
        self._validate_fields_match(brain_key, "pred_field", existing_info)


class PseudoLabelsResults(fob.BrainResults):
    """Counts of a run, recomputed from the dataset each time a run ends.

    Attributes:
        processed: samples with instances written.
        instances: total instances.
        per_class: ``{class: instance count}``.
        failures: ``{sample id: error}`` of samples that failed.
    """

    def __init__(
        self,
        samples: Any,
        config: PseudoLabelsConfig,
        brain_key: str,
        processed: int = 0,
        instances: int = 0,
        per_class: dict[str, int] | None = None,
        failures: dict[str, str] | None = None,
        backend: Any = None,
    ) -> None:
        super().__init__(samples, config, brain_key, backend=backend)
        self.processed = processed
        self.instances = instances
        self.per_class = per_class or {}
        self.failures = failures or {}

    def attributes(self) -> list[str]:
        return ["cls", "processed", "instances", "per_class", "failures"]

    @classmethod
    def _from_dict(cls, d, samples, config, brain_key):
        return cls(
            samples,
            config,
            brain_key,
            processed=d.get("processed", 0),
            instances=d.get("instances", 0),
            per_class=d.get("per_class"),
            failures=d.get("failures"),
        )

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary for logs and operator outputs."""
        return {
            "brain_key": self.key,
            "processed": self.processed,
            "instances": self.instances,
            "per_class": self.per_class,
            "failed": len(self.failures),
            "failures": self.failures,
            "smoke": self.config.smoke,
        }


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
    names = _class_names(samples, classes, class_field)
    for field in (brain_key, pred_field, heatmap_field):
        if not isinstance(field, str) or not field.isidentifier():
            raise ValueError(f"Invalid name {field!r}: use a Python identifier")
    settings, models = _settings_and_models(config, model, sd_model, sam_model, sam_checkpoint)
    run_config = PseudoLabelsConfig(
        pred_field=pred_field,
        heatmap_fields={n: f"{heatmap_field}_{class_slug(n)}" for n in names},
        error_field=f"{pred_field}_error",
        heatmap_dir=_heatmap_dir(samples, brain_key, output_dir),
        classes=names if classes is not None else None,
        class_field=class_field,
        settings=settings.to_dict(),
        models=models,
        smoke=smoke,
    )
    if brain_key in samples.list_brain_runs() and output_dir is None:
        # the run's own folder, even if the dataset was renamed since
        run_config.heatmap_dir = samples.get_brain_info(brain_key).config.heatmap_dir
    return _run(samples, brain_key, run_config, model, device, batch_size, progress)


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
    stored = _stored_config(samples, brain_key)
    changed = sorted(set(runtime_settings) - set(RUNTIME_SETTINGS))
    if changed:
        raise ValueError(
            f"A resumed run keeps its settings; only {list(RUNTIME_SETTINGS)} may change, "
            f"not {changed}"
        )
    run_config = stored.copy()
    if model is None:
        _require_recorded_models(stored, brain_key, "model=")
        run_config.settings = {**stored.settings, **runtime_settings}
        return _run(samples, brain_key, run_config, model, device, batch_size, progress)
    with _settings_applied(model, runtime_settings):
        config, run_config.models = _settings_and_models(None, model, None, None, None)
        run_config.settings = config.to_dict()
        return _run(samples, brain_key, run_config, model, device, batch_size, progress)


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


def _stored_config(samples: Any, brain_key: str) -> PseudoLabelsConfig:
    """The config of the DiffuPrompter run ``brain_key``."""
    if brain_key not in samples.list_brain_runs(method=METHOD):
        raise ValueError(f"No DiffuPrompter brain run '{brain_key}' on this collection")
    return samples.get_brain_info(brain_key).config


def _require_recorded_models(config: PseudoLabelsConfig, brain_key: str, remedy: str) -> None:
    """Raises when the run was made with an already-built model, whose
    weights are therefore not on record; ``remedy`` says what to pass."""
    if not config.models_recorded:
        raise ValueError(
            f"Brain run '{brain_key}' was made with an already-built model, so its "
            f"models are not on record: pass {remedy}"
        )


def _run(samples, brain_key, run_config, model, device, batch_size, progress):
    """Registers (or resumes) the run, annotates its pending samples and
    stores the results; everything is checked before anything is written."""
    method = run_config.build()
    resuming = brain_key in samples.list_brain_runs()
    if resuming:
        _check_resumable(samples, brain_key, run_config)
        pending = samples.exists(run_config.pred_field, False).values("id")
    else:
        _check_new_fields(samples, run_config)
        pending = samples.values("id")
    if pending and model is None:
        model = _load_model(run_config, device)  # fails before anything is written
    if not resuming:
        method.register_run(samples, brain_key, overwrite=False)
    _declare_fields(samples, run_config)
    if pending:
        _annotate_samples(samples, pending, model, run_config, batch_size, progress)
    results = _collect_results(samples, brain_key, run_config, method)
    method.save_run_results(samples, brain_key, results)
    if results.failures:
        logger.warning("%d samples failed; see results.failures", len(results.failures))
    return results


def _class_names(samples: Any, classes: Sequence[str] | None, class_field: str | None):
    if (classes is None) == (class_field is None):
        raise ValueError("Give exactly one of classes (a list) and class_field")
    if classes is not None:
        from .engine.pipeline import validate_class_names

        return validate_class_names(classes)
    return _classes_in_field(samples, class_field)


def _settings_and_models(config, model, sd_model, sam_model, sam_checkpoint):
    """The method settings and the record of which models label the run."""
    if model is not None:
        return model.config, {"sd_model": type(model).__name__, "sam_model": PREBUILT}
    if not isinstance(config, DiffuPrompterConfig):
        config = DiffuPrompterConfig.from_dict(dict(config or {}))
    return config, {
        "sd_model": str(sd_model or DEFAULT_SD_MODEL),
        "sam_model": str(sam_model or DEFAULT_SAM_MODEL),
        "sam_checkpoint": str(sam_checkpoint) if sam_checkpoint else None,
    }


def _heatmap_dir(samples: Any, brain_key: str, output_dir: str | None) -> str:
    root = output_dir or os.path.join(fo.config.default_dataset_dir, "__diffuprompter__")
    return os.path.abspath(os.path.join(root, class_slug(samples._dataset.name), brain_key))


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
    taken = [f for f in config.field_types() if samples._dataset.has_sample_field(f)]
    if taken:
        raise ValueError(f"Fields {taken} already exist; choose other field names or delete them")


def _declare_fields(samples: Any, config: PseudoLabelsConfig) -> None:
    dataset = samples._dataset
    for name, label_type in config.field_types().items():
        if dataset.has_sample_field(name):
            continue
        if label_type is None:
            dataset.add_sample_field(name, fo.StringField)
        else:
            dataset.add_sample_field(name, fo.EmbeddedDocumentField, embedded_doc_type=label_type)


def _check_resumable(samples: Any, brain_key: str, config: PseudoLabelsConfig) -> None:
    existing = samples.get_brain_info(brain_key).config
    if getattr(existing, "method", None) != METHOD:
        raise ValueError(f"Brain key '{brain_key}' is taken by another kind of brain run")
    keys = ("pred_field", "heatmap_fields", "models", "classes", "class_field")
    differs = [k for k in keys if getattr(existing, k, None) != getattr(config, k)]
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


def _load_model(config: PseudoLabelsConfig, device: str | None) -> Any:
    from .engine.pipeline import DiffuPrompter

    return DiffuPrompter.from_pretrained(
        sd_model=config.models["sd_model"],
        sam_model=config.models["sam_model"],
        sam_checkpoint=config.models.get("sam_checkpoint"),
        device=device,
        config=config.engine_config(),
    )


def _chunks(items: Sequence[str], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _annotate_samples(samples, ids, model, config, batch_size, progress) -> None:
    """Annotates the samples ``ids`` in batches, saving each batch as it ends."""
    with fou.ProgressBar(total=len(ids), progress=progress) as pb:
        for chunk in _chunks(ids, batch_size):
            items = []
            with samples.save_context(batch_size=batch_size) as saver:
                for sample in samples.select(chunk):
                    names = config.classes or sample_classes(sample, config.class_field)
                    if names:
                        items.append((sample, sample.filepath, names))
                        continue
                    _write(sample, ValueError(f"no class in field '{config.class_field}'"), config)
                    saver.save(sample)
                    pb.update()
                for sample, result in model.annotate_all(items):
                    _write(sample, result, config)
                    saver.save(sample)
                    pb.update()


def _write(sample: fo.Sample, result: Any, config: PseudoLabelsConfig) -> None:
    """Stores one sample's annotation, or its error."""
    if isinstance(result, Exception):
        logger.warning("Sample %s (%s) failed: %s", sample.id, sample.filepath, result)
        sample[config.error_field] = f"{type(result).__name__}: {result}"
        return
    height, width = next(iter(result.heatmaps.values())).shape
    for name, heatmap in result.heatmaps.items():
        path = os.path.join(config.heatmap_dir, class_slug(name), f"{sample.id}.png")
        sample[config.heatmap_fields[name]] = write_heatmap(heatmap, path)
    sample[config.pred_field] = to_detections(result.instances, width, height)
    sample[config.error_field] = None


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


def load_thresholds(thresholds: float | Mapping[str, float] | str | None) -> Any:
    """Per-class thresholds from a number, a dict, or a JSON file holding a
    dict (optionally under a ``"thresholds"`` key, as calibration writes)."""
    if isinstance(thresholds, (str, os.PathLike)):
        path = os.fspath(thresholds)
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"Cannot read thresholds file '{path}': {e}") from e
        thresholds = data.get("thresholds", data) if isinstance(data, dict) else data
        if not isinstance(thresholds, dict):
            raise ValueError(f"Thresholds file '{path}' must hold a JSON object")
    named = thresholds.items() if isinstance(thresholds, Mapping) else [("all", thresholds)]
    for name, value in named:
        if value is not None:
            check_setting("threshold", value, f"Threshold for {name}")
    return thresholds


def rethreshold_pseudo_labels(
    samples: Any,
    brain_key: str,
    out_field: str,
    thresholds: float | Mapping[str, float] | str | None = None,
    sam_model: Any = None,
    sam_checkpoint: str | None = None,
    device: str | None = None,
    prompter: Any = None,
    batch_size: int = 16,
    progress: bool | Callable | None = None,
) -> dict[str, Any]:
    """Rebuilds instances from a run's stored heatmaps with new thresholds,
    without rerunning diffusion (only SAM is loaded).

    Args:
        samples: a dataset or view with a finished or partial run.
        brain_key: the DiffuPrompter run whose heatmaps to use.
        out_field: new ``fo.Detections`` field (overwritten if it exists).
        thresholds: gamma for all classes, ``{class: gamma}``, or a JSON file
            of that dict; None keeps the run's threshold.
        sam_model, sam_checkpoint, device: SAM to use (default: the run's
            SAM and checkpoint).
        prompter: an already-built ``SamPrompter``.

    Returns:
        ``{"samples": n, "instances": n, "per_class": {...}}``.
    """
    config = _stored_config(samples, brain_key)
    if not out_field.isidentifier():
        raise ValueError(f"Invalid field name {out_field!r}: use a Python identifier")
    if out_field in PseudoLabels(config).get_fields(samples, brain_key):
        raise ValueError(f"Field '{out_field}' belongs to brain run '{brain_key}'")
    thresholds = load_thresholds(thresholds)
    if prompter is None:
        from .engine.segmentation import SamPrompter

        if sam_model is None:  # the run's SAM; its checkpoint unless another is given
            _require_recorded_models(
                config, brain_key, "sam_model= (and sam_checkpoint=) or prompter="
            )
            sam_model = config.models["sam_model"]
            sam_checkpoint = sam_checkpoint or config.models.get("sam_checkpoint")
        prompter = SamPrompter.from_pretrained(
            sam_model, sam_checkpoint, device=device, config=config.engine_config()
        )
    done = samples.exists(config.pred_field)
    ids = done.values("id")
    with fou.ProgressBar(total=len(ids), progress=progress) as pb:
        for chunk in _chunks(ids, batch_size):
            for sample in done.select(chunk).iter_samples(autosave=True, batch_size=batch_size):
                heatmaps = {
                    name: read_heatmap(sample[field])
                    for name, field in config.heatmap_fields.items()
                    if sample[field] is not None
                }
                instances = prompter.segment(sample.filepath, heatmaps, thresholds)
                height, width = next(iter(heatmaps.values())).shape
                sample[out_field] = to_detections(instances, width, height)
                pb.update()
    return {
        "samples": len(ids),
        "instances": done.count(f"{out_field}.detections"),
        "per_class": done.count_values(f"{out_field}.detections.label"),
    }
