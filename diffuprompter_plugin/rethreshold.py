"""Re-thresholding a run: new instances from its stored heatmaps with new
per-class thresholds gamma, rerunning SAM but not diffusion."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import fiftyone as fo
import fiftyone.core.utils as fou

from .brain import PseudoLabels, quality_field, stored_config
from .engine.config import check_setting
from .labelling.checks import check_batch_size
from .labels import (
    read_heatmap,
    read_spread,
    sample_image,
    scene_heatmap_path,
    spread_path,
    store_instances,
)

logger = logging.getLogger(__name__)


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


def _spreads(spreads: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The draws' spreads (arrays, or a scene's GeoTIFF paths) of a
    sample's classes, or None when some class has none (a run stored before
    the quality signals): its instances then lack ``draw_agreement``."""
    return None if any(v is None for v in spreads.values()) else spreads


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
        out_field: new ``fo.Detections`` field (overwritten if it exists),
            its instances with their quality signals recomputed, and
            ``<out_field>_quality`` their lowest quality; both are recorded
            with the run, so deleting the run deletes them. Instances from
            a run stored before the signals lack ``draw_agreement`` (their
            draws' spread was not kept).
        thresholds: gamma for all classes, ``{class: gamma}``, or a JSON file
            of that dict; None keeps the run's threshold.
        sam_model, sam_checkpoint, device: SAM to use (default: the run's
            SAM and checkpoint).
        prompter: an already-built ``SamPrompter``.

    Returns:
        ``{"samples": n, "instances": n, "per_class": {...}, "failures":
        {sample id: error}}``: a sample whose new instances are more than it
        can hold (see :func:`~.labels.to_detections`) is left without them.
    """
    config = stored_config(samples, brain_key)
    if not out_field.isidentifier():
        raise ValueError(f"Invalid field name {out_field!r}: use a Python identifier")
    if out_field in config.field_types():
        raise ValueError(f"Field '{out_field}' belongs to brain run '{brain_key}'")
    check_batch_size(batch_size)
    thresholds = load_thresholds(thresholds)
    prompter = config.load_prompter(sam_model, sam_checkpoint, device, prompter)
    if out_field not in config.rethreshold_fields:  # deleted with the run from now on
        config.rethreshold_fields.append(out_field)
        PseudoLabels.update_run_config(samples, brain_key, config)
    if not samples._dataset.has_sample_field(quality_field(out_field)):  # may stay all None
        samples._dataset.add_sample_field(quality_field(out_field), fo.FloatField)
    from .engine.image import opened
    from .engine.tiling import segment_scene

    done = samples.exists(config.pred_field)
    ids = done.values("id")
    failures: dict[str, str] = {}
    with fou.ProgressBar(total=len(ids), progress=progress) as pb:
        for chunk in fou.iter_slices(ids, batch_size):
            for sample in done.select(chunk).iter_samples(autosave=True, batch_size=batch_size):
                labels = {
                    name: sample[field]
                    for name, field in config.heatmap_fields.items()
                    if sample[field] is not None
                }
                scene = {name: scene_heatmap_path(label) for name, label in labels.items()}
                if all(scene.values()):  # a scene labelled in tiles: window by window
                    spreads = _spreads({n: spread_path(label) for n, label in labels.items()})
                    with opened(sample_image(sample)) as raster:
                        instances = segment_scene(prompter, raster, scene, thresholds, spreads)
                        height, width = raster.height, raster.width
                else:
                    heatmaps = {name: read_heatmap(label) for name, label in labels.items()}
                    spreads = _spreads(
                        {name: read_spread(label) for name, label in labels.items()}
                    )
                    image = sample_image(sample)
                    instances = prompter.segment(image, heatmaps, thresholds, spreads)
                    height, width = next(iter(heatmaps.values())).shape
                try:
                    store_instances(sample, out_field, instances, width, height)
                except ValueError as e:  # more instances than a sample can hold
                    logger.warning("Sample %s (%s): %s", sample.id, sample.filepath, e)
                    sample[out_field] = sample[quality_field(out_field)] = None
                    failures[sample.id] = str(e)
                pb.update()
    return {
        "samples": len(ids),
        "instances": done.count(f"{out_field}.detections"),
        "per_class": done.count_values(f"{out_field}.detections.label"),
        "failures": failures,
    }
