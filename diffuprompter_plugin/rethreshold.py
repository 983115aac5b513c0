"""Re-thresholding a run: new instances from its stored heatmaps with new
per-class thresholds gamma, rerunning SAM but not diffusion."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import fiftyone as fo
import fiftyone.core.utils as fou

from .brain import PseudoLabels, quality_field, stored_config
from .engine.config import check_setting
from .labelling.checks import check_batch_size, check_field_name
from .labels import (
    heatmap_files,
    read_heatmap,
    read_spread,
    sample_image,
    scene_heatmap_path,
    spread_path,
    store_instances,
)
from .verdicts import check_no_verdicts, enable_editing

logger = logging.getLogger(__name__)


def load_thresholds(
    thresholds: float | Mapping[str, float] | str | None, classes: Sequence[str] | None = None
) -> Any:
    """Per-class thresholds from a number, a dict, or a JSON file holding a
    dict (optionally under a ``"thresholds"`` key, as calibration writes).

    Each value must be a number in the range of the ``threshold`` setting
    (``engine/config.py``); a class left out keeps the run's threshold.

    Raises:
        ValueError: a value that is null or out of range, or (given the
            run's ``classes``) a class that is not one of them, exactly as
            spelt (``Ship`` is not ``ship``); the message names both.
    """
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
    if not isinstance(thresholds, Mapping):
        if thresholds is not None:
            check_setting("threshold", thresholds, "Threshold for all classes")
        return thresholds
    for name, value in thresholds.items():
        if classes is not None and name not in classes:
            raise ValueError(
                f"Thresholds name the class {name!r}, which is not one of the run's classes "
                f"{list(classes)} (names must match exactly)"
            )
        if value is None:
            raise ValueError(
                f"Threshold for {name!r} is null: give a number, or leave the class out "
                "to keep the run's threshold"
            )
        check_setting("threshold", value, f"Threshold for {name!r}")
    return thresholds


def _missing_files(labels: Any) -> list[str]:
    """The files of heatmap ``labels`` (:func:`~.labels.heatmap_files`) not on disk."""
    return [p for label in labels for p in heatmap_files(label) if not os.path.exists(p)]


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
        out_field: new ``fo.Detections`` field, or one that re-thresholding
            this run wrote before (overwritten, unless a label there carries a
            verdict: refused); any other existing field is
            refused. It is recorded with the run, so deleting the run
            deletes it. Its instances get their quality signals recomputed,
            and ``<out_field>_quality`` their lowest quality (recorded with
            the run too). Instances from a run stored before the signals
            lack ``draw_agreement`` (their draws' spread was not kept).
        thresholds: gamma for all classes, ``{class: gamma}``, or a JSON file
            of that dict; None keeps the run's threshold.
        sam_model, sam_checkpoint, device: SAM to use (default: the run's
            SAM and checkpoint).
        prompter: an already-built ``SamPrompter``.

    Returns:
        ``{"samples": n, "instances": n, "per_class": {...}, "failures":
        {sample id: error}}``: a sample whose new instances are more than it
        can hold (see :func:`~.labels.to_detections`), or whose heatmap
        files are gone (the error names them), is left without them, and
        the others are re-thresholded.
    """
    config = stored_config(samples, brain_key)
    check_field_name(out_field, "out_field")
    if out_field in config.field_types():
        raise ValueError(f"Field '{out_field}' belongs to brain run '{brain_key}'")
    for field in (out_field, quality_field(out_field)):
        if samples._dataset.has_sample_field(field) and out_field not in config.rethreshold_fields:
            raise ValueError(
                f"Field '{field}' exists and is not one that re-thresholding run "
                f"'{brain_key}' wrote: choose another out_field, or delete it first"
            )
    check_batch_size(batch_size)
    check_no_verdicts(samples, out_field)
    thresholds = load_thresholds(thresholds, list(config.heatmap_fields))
    prompter = config.load_prompter(sam_model, sam_checkpoint, device, prompter)
    if out_field not in config.rethreshold_fields:  # deleted with the run from now on
        config.rethreshold_fields.append(out_field)
        PseudoLabels.update_run_config(samples, brain_key, config)
    if not samples._dataset.has_sample_field(quality_field(out_field)):  # may stay all None
        samples._dataset.add_sample_field(quality_field(out_field), fo.FloatField)
    from .engine.image import opened
    from .engine.scenes import segment_scene
    from .engine.tiles import needs_tiling

    dataset = samples._dataset
    if not dataset.has_sample_field(out_field):  # declared, so a failed sample can be None
        dataset.add_sample_field(
            out_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections
        )
    enable_editing(dataset, out_field, list(config.heatmap_fields))
    tiling = config.engine_config()  # the run's tile_size decided which samples were tiled
    done = samples.exists(config.pred_field)
    ids = done.values("id")
    failures: dict[str, str] = {}

    def fail(sample: Any, error: str) -> None:
        logger.warning("Sample %s (%s): %s", sample.id, sample.filepath, error)
        sample[out_field] = sample[quality_field(out_field)] = None
        failures[sample.id] = error

    with fou.ProgressBar(total=len(ids), progress=progress) as pb:
        for chunk in fou.iter_slices(ids, batch_size):
            for sample in done.select(chunk).iter_samples(autosave=True, batch_size=batch_size):
                pb.update()
                labels = {
                    name: sample[field]
                    for name, field in config.heatmap_fields.items()
                    if sample[field] is not None
                }
                missing = _missing_files(labels.values())
                if missing:  # fails this sample alone; resume computes it again
                    fail(sample, f"Heatmap files missing: {missing}")
                    continue
                with opened(sample_image(sample)) as raster:
                    height, width = raster.height, raster.width
                    if needs_tiling(height, width, tiling):  # a scene: window by window
                        scene = {name: scene_heatmap_path(label) for name, label in labels.items()}
                        missing = sorted(name for name, path in scene.items() if not path)
                        if missing:
                            fail(
                                sample,
                                f"a scene labelled in tiles (a side over tile_size="
                                f"{tiling.tile_size}) whose heatmaps of {missing} have no "
                                "full-resolution GeoTIFF (geotiff_path)",
                            )
                            continue
                        spreads = _spreads({n: spread_path(label) for n, label in labels.items()})
                        instances = segment_scene(prompter, raster, scene, thresholds, spreads)
                    else:
                        heatmaps = {name: read_heatmap(label) for name, label in labels.items()}
                        spreads = _spreads({n: read_spread(label) for n, label in labels.items()})
                        instances = prompter.segment(raster, heatmaps, thresholds, spreads)
                try:
                    store_instances(sample, out_field, instances, width, height)
                except ValueError as e:  # more instances than a sample can hold
                    fail(sample, str(e))
    lost = [i for i, e in failures.items() if e.startswith("Heatmap files missing")]
    if lost:
        logger.warning(
            "%d samples of run '%s' lost their heatmap files and got no '%s' (%s); "
            "resume_pseudo_labels(samples, '%s') computes them again",
            len(lost),
            brain_key,
            out_field,
            ", ".join(lost),
            brain_key,
        )
    return {
        "samples": len(ids),
        "instances": done.count(f"{out_field}.detections"),
        "per_class": done.count_values(f"{out_field}.detections.label"),
        "failures": failures,
    }
