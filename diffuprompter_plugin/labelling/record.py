"""The record of a new or resumed run, built from its arguments, and where
its heatmaps go."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import fiftyone as fo

from ..brain import PREBUILT, PseudoLabelsConfig, stored_config
from ..engine.config import DEFAULT_SAM_MODEL, DEFAULT_SD_MODEL, DiffuPrompterConfig, model_source
from ..labels import heatmap_fields
from ..run_args import DEFAULT_RUN_ARGS, RunArgs
from .checks import check_names, checked_class_names

Settings = DiffuPrompterConfig | Mapping[str, Any] | None


def new_record(
    samples: Any,
    brain_key: str,
    run_args: RunArgs,
    config: Settings,
    model: Any,
    output_dir: str | None,
    smoke: bool,
) -> PseudoLabelsConfig:
    """The checked record of a new run (or of the resumed run ``brain_key``)
    from its arguments: ``config`` (method settings) and the models of
    ``run``, or those of ``model`` when given (see :func:`settings_and_models`)."""
    settings, models = settings_and_models(config, model, run_args)
    names = checked_class_names(samples, run_args.classes, run_args.class_field)
    check_names(brain_key, pred_field=run_args.pred_field, heatmap_field=run_args.heatmap_field)
    existing = (
        stored_config(samples, brain_key) if brain_key in samples.list_brain_runs() else None
    )
    run_id = existing.run_id if existing is not None else new_run_id()
    return PseudoLabelsConfig(
        pred_field=run_args.pred_field,
        heatmap_fields=heatmap_fields(names, run_args.heatmap_field),
        error_field=f"{run_args.pred_field}_error",
        heatmap_dir=heatmap_dir(samples, existing, run_id or brain_key, output_dir),
        run_id=run_id,
        classes=names if run_args.classes is not None else None,
        class_field=run_args.class_field,
        settings=settings.to_dict(),
        models=models,
        smoke=smoke,
    )


def settings_and_models(
    config: Settings, model: Any, run_args: RunArgs = DEFAULT_RUN_ARGS
) -> tuple[DiffuPrompterConfig, dict[str, Any]]:
    """The method settings and the record of which models label the run: a
    model from ``from_pretrained`` brings the ids and paths it was loaded
    from (``sources``); a part built otherwise is recorded as ``PREBUILT``.
    Without ``model``, ``config`` and the models named in ``run``."""
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
        "sd_model": model_source(run_args.sd_model or DEFAULT_SD_MODEL),
        "sam_model": model_source(run_args.sam_model or DEFAULT_SAM_MODEL),
        "sam_checkpoint": model_source(run_args.sam_checkpoint),
    }


def resumed_record(
    stored: PseudoLabelsConfig, model: Any, runtime_settings: Mapping[str, Any]
) -> PseudoLabelsConfig:
    """The record of the ``stored`` run as it resumes: its own settings with
    ``runtime_settings`` applied, or, given ``model``, the model's config and
    sources (call it inside :func:`settings_applied`)."""
    record = stored.copy()
    if model is None:
        record.settings = {**record.settings, **runtime_settings}
    else:
        config, record.models = settings_and_models(None, model)
        record.settings = config.to_dict()
    return record


@contextlib.contextmanager
def settings_applied(model: Any, settings: Mapping[str, Any]) -> Iterator[None]:
    """Runs the block with ``settings`` applied to ``model.config`` (none
    without a model), then gives the caller's model its own config back."""
    if model is None:
        yield
        return
    own = model.config
    model.config = own.replace(**settings)
    try:
        yield
    finally:
        model.config = own


def heatmap_root(samples: Any, output_dir: str | None = None) -> str:
    """The folder of a dataset's heatmaps: ``output_dir``, or FiftyOne's
    dataset dir, then ``__diffuprompter__/<dataset id>``. The id never
    changes and is never reused, so renamed datasets, or names that simplify
    alike (``p7-a``, ``p7(a)``), never share heatmaps."""
    root = output_dir or os.path.join(fo.config.default_dataset_dir, "__diffuprompter__")
    return os.path.abspath(os.path.join(root, str(samples._dataset._doc.id)))


def new_run_id() -> str:
    """A new run's id: unique, never reused, and safe as a folder name."""
    return uuid.uuid4().hex


def heatmap_dir(
    samples: Any, existing: PseudoLabelsConfig | None, name: str, output_dir: str | None
) -> str:
    """The heatmap folder of a run: ``<heatmap_root>/<name>``, ``name`` being
    the run's id (the brain key for runs stored before run ids), so that a
    run's folder is its own for life, whatever renames happen and whichever
    run takes its key later. An ``existing`` run keeps its recorded folder,
    wherever it was made, unless ``output_dir`` is given."""
    if existing is not None and output_dir is None:
        return existing.heatmap_dir
    return os.path.join(heatmap_root(samples, output_dir), name)
