"""Training sets that honour the review: only the labels a verdict (or a
quality threshold) lets in, through FiftyOne's own exporters.

Writers (README, "Review and verified export"):

- ``coco`` with ``masks="rle"`` (the default): FiftyOne's
  ``COCODetectionDataset`` exporter writes the media and ``labels.json``;
  then each annotation's ``segmentation`` becomes the exact RLE of its mask
  from the project's writer (:func:`diffuprompter_plugin.coco.to_coco`),
  ``area`` its pixel count and ``bbox`` the mask's tight box. FiftyOne
  alone traces non-crowd masks as polygons (holes are lost, areas shift)
  and sets ``area`` to the box's w x h.
- ``coco`` with ``masks="polygons"``: FiftyOne's exporter as it is.
- ``yolov5``: FiftyOne's ``YOLOv5Dataset`` exporter with ``use_masks=True``
  (one polygon per row). The format has no holes: FiftyOne writes each ring
  of a mask as a row of its own, so a hole or a second part becomes an extra
  object; the result counts such instances as ``split_instances``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F
from scipy import ndimage

from .coco import to_coco
from .labels import require_masks, require_metadata
from .verdicts import ACCEPTED, AUTO_REJECTED, REJECTED, labels_path, person_made, unreviewed

logger = logging.getLogger(__name__)

INCLUDES = ("accepted", "accepted+unreviewed")
FORMATS = {"coco": fo.types.COCODetectionDataset, "yolov5": fo.types.YOLOv5Dataset}
MASKS = ("rle", "polygons")


def _tagged(tag: str) -> Any:
    return F("tags").exists() & F("tags").contains(tag)


def included(include: str | float, person: Any) -> Any:
    """The label filter of an ``include`` rule, ``person`` being the filter
    of a person's work in the field (:func:`~.verdicts.person_made`);
    rejected labels (and conflicting ones, tagged both ways) never pass,
    save those rejected automatically that a person edited since: the
    run's quality that rejected them no longer describes them, so they
    count as unreviewed.

    - ``"accepted"``: labels tagged accepted;
    - ``"accepted+unreviewed"``: every label that is not rejected;
    - a number t in [0, 1]: accepted labels, and unreviewed labels whose
      ``quality`` is at least t or that a person edited or added (no run's
      quality describes them).

    Raises:
        ValueError: any other value.
    """
    overruled = person & _tagged(AUTO_REJECTED) & ~_tagged(ACCEPTED)  # else conflicting
    not_rejected = ~_tagged(REJECTED) | overruled
    accepted = _tagged(ACCEPTED) & not_rejected
    if include == "accepted":
        return accepted
    if include == "accepted+unreviewed":
        return not_rejected
    if isinstance(include, (int, float)) and not isinstance(include, bool):
        if not 0.0 <= include <= 1.0:
            raise ValueError(f"A quality threshold in include must lie in [0, 1], not {include}")
        judged = person | (F("quality").exists() & (F("quality") >= include))
        return accepted | ((unreviewed() | overruled) & judged)
    raise ValueError(f"include must be one of {INCLUDES} or a quality threshold, not {include!r}")


def training_view(samples: Any, pred_field: str, include: str | float) -> Any:
    """The samples with at least one label of ``pred_field`` that ``include``
    lets in (:func:`included`), showing only those labels."""
    person = person_made(samples, pred_field)  # checks the field
    return samples.filter_labels(pred_field, included(include, person))


def export_training_set(
    samples: Any,
    pred_field: str,
    export_dir: str | os.PathLike,
    dataset_type: str | type = "coco",
    include: str | float = "accepted",
    masks: str | None = None,
    export_media: bool | str = True,
    overwrite: bool = False,
    progress: bool | Callable | None = None,
) -> dict[str, Any]:
    """Exports the labels of ``pred_field`` that the review lets in as an
    instance-segmentation training set (writers: the module notes).

    Args:
        samples: a dataset or view, or a patches view of ``pred_field``
            (its labels are exported, with their images).
        pred_field: the ``fo.Detections`` field; every exported label needs
            a mask.
        export_dir: the output folder; written under a temporary name and
            then renamed, so a failed export leaves nothing behind.
        dataset_type: ``"coco"``, ``"yolov5"``, ``fo.types.COCODetectionDataset``
            or ``fo.types.YOLOv5Dataset``.
        include: ``"accepted"``, ``"accepted+unreviewed"`` or a quality
            threshold (see :func:`included`); rejected labels never.
        masks: COCO only: ``"rle"`` (exact, default) or ``"polygons"``
            (FiftyOne's traced polygons).
        export_media: as FiftyOne's ``export_media`` (True copies images).
        overwrite: replace an existing non-empty ``export_dir``.

    Returns:
        ``{"export_dir", "dataset_type", "writer", "samples", "labels",
        "per_class", "split_instances"}``.

    Raises:
        ValueError: an unknown type, include or masks value, nothing to
            export, a label without a mask, an existing ``export_dir``
            without ``overwrite`` or that is a file, or unreadable images.
    """
    name = _format_name(dataset_type)
    if masks is None:
        masks = "rle" if name == "coco" else "polygons"
    if masks not in MASKS or (name == "yolov5" and masks == "rle"):
        allowed = MASKS if name == "coco" else ("polygons",)
        raise ValueError(f"masks={masks!r} does not apply to {name}: use one of {allowed}")
    export_dir = os.path.abspath(os.fspath(export_dir))
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ValueError(f"Export folder '{export_dir}' is a file")
    if os.path.isdir(export_dir) and os.listdir(export_dir) and not overwrite:
        raise ValueError(f"Export folder '{export_dir}' is not empty; pass overwrite=True")
    samples = as_samples(samples, pred_field)
    view = check_included(samples, pred_field, include)
    path = labels_path(samples, pred_field)
    count = view.count(path)
    require_masks(view, pred_field, "a training set needs a mask on every label", path)
    require_metadata(view)
    classes = sorted(view.distinct(f"{path}.label"))
    split = split_instances(view, pred_field) if name == "yolov5" else 0
    made = missing_parents(export_dir)
    scratch = None
    try:
        os.makedirs(os.path.dirname(export_dir), exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(export_dir))
        staging = os.path.join(scratch, "out")  # new to FiftyOne: nothing to merge with
        kwargs = {}
        if name == "yolov5":  # no absolute "path" in dataset.yaml: the folder is renamed
            kwargs = {"use_masks": True, "split": "train", "include_path": False}
        view.export(
            export_dir=staging,
            dataset_type=FORMATS[name],
            label_field=pred_field,
            classes=classes,
            export_media=export_media,
            progress=progress,
            **kwargs,
        )
        if name == "coco" and masks == "rle":
            exact_masks(view, pred_field, classes, os.path.join(staging, "labels.json"))
        if os.path.isdir(export_dir):
            shutil.rmtree(export_dir)
        os.replace(staging, export_dir)
    except BaseException:
        for folder in (scratch, *made):  # the deepest first
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    if split:
        logger.warning(
            "%d instances have holes or several parts; YOLO writes each ring as an object", split
        )
    writer = {"rle": "FiftyOne COCO + exact RLE", "polygons": f"FiftyOne {name} polygons"}
    return {
        "export_dir": export_dir,
        "dataset_type": name,
        "writer": writer[masks],
        "samples": len(view),
        "labels": count,
        "per_class": view.count_values(f"{path}.label"),
        "split_instances": split,
    }


def check_included(samples: Any, pred_field: str, include: str | float) -> Any:
    """The :func:`training_view` of ``samples``.

    Raises:
        ValueError: it holds no label, naming ``include`` and the count of
            labels it left out.
    """
    view = training_view(samples, pred_field, include)
    path = labels_path(samples, pred_field)
    if not view.count(path):
        raise ValueError(
            f"Nothing to export: none of the {samples.count(path)} labels of "
            f"'{pred_field}' is let in by include={include!r}"
        )
    return view


def as_samples(samples: Any, pred_field: str) -> Any:
    """``samples``, or for a patches view of ``pred_field`` (the App's view
    after a review by patch), the labels it shows as a view of their
    images, which FiftyOne's exporters take."""
    if not samples._is_patches:
        return samples
    labels_path(samples, pred_field)  # a patches view of that field
    ids = samples.values(f"{pred_field}.id")
    return samples._root_dataset.select_labels(ids=ids, fields=pred_field)


def missing_parents(folder: str) -> list[str]:
    """The folders above ``folder`` that do not exist yet, deepest first."""
    missing = []
    parent = os.path.dirname(folder)
    while parent and not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    return missing


def _format_name(dataset_type: str | type) -> str:
    for name, kind in FORMATS.items():
        if dataset_type in (name, kind) or isinstance(dataset_type, kind):
            return name
    raise ValueError(
        f"Unknown dataset_type {dataset_type!r}: use 'coco', 'yolov5', "
        "fo.types.COCODetectionDataset or fo.types.YOLOv5Dataset"
    )


def exact_masks(view: Any, pred_field: str, classes: list[str], labels_json: str) -> None:
    """Replaces the traced polygons of a ``labels.json`` that FiftyOne's COCO
    exporter wrote for ``view`` with the exact RLE of each mask, its pixel
    area and tight box.

    FiftyOne numbers images 1, 2, ... in the view's order and writes each
    image's objects in their order, as :func:`~.coco.to_coco` does; each
    pair is checked (same class, the mask inside the box) before it is changed.

    Raises:
        RuntimeError: the two do not line up (a FiftyOne change), naming
            the image.
    """
    with open(labels_json) as f:
        data = json.load(f)
    exact = to_coco(view, pred_field, classes, scores=False)
    names = {c["id"]: c["name"] for c in data["categories"]}
    ours = {}
    for ann in exact["annotations"]:
        ours.setdefault(ann["image_id"], []).append(ann)
    theirs = {}
    for ann in data.get("annotations", []):
        theirs.setdefault(ann["image_id"], []).append(ann)
    for image in data["images"]:
        mine, fiftyone = ours.get(image["id"], []), theirs.get(image["id"], [])
        lined_up = len(mine) == len(fiftyone) and all(
            classes[a["category_id"] - 1] == names[b["category_id"]]
            and _inside(a["bbox"], b["bbox"])
            for a, b in zip(mine, fiftyone, strict=False)
        )
        if not lined_up:
            raise RuntimeError(
                f"The COCO export of '{image['file_name']}' does not line up with its "
                "detections; cannot write exact masks"
            )
        for a, b in zip(mine, fiftyone, strict=True):
            b.update(segmentation=a["segmentation"], area=a["area"], bbox=a["bbox"])
    with open(labels_json, "w") as f:
        json.dump(data, f)


def _inside(inner: list[float], outer: list[float], slack: float = 1.0) -> bool:
    """Whether COCO box ``inner`` ([x, y, w, h]) lies within ``outer``, give or take ``slack``."""
    x, y, w, h = inner
    ox, oy, ow, oh = outer
    return (
        x >= ox - slack
        and y >= oy - slack
        and x + w <= ox + ow + slack
        and y + h <= oy + oh + slack
    )


def split_instances(view: Any, pred_field: str) -> int:
    """Instances whose mask has a hole or more than one 8-connected part
    (those a polygon-per-row format writes as several objects)."""
    count = 0
    for detections in view.values(pred_field):
        for det in detections.detections if detections else []:
            mask = det.get_mask().astype(bool)
            parts = ndimage.label(mask, structure=np.ones((3, 3)))[1]
            holes = ndimage.binary_fill_holes(mask).sum() > mask.sum()
            count += bool(parts > 1 or holes)
    return count
