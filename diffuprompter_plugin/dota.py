"""DOTA's oriented-box text format: one ``.txt`` per image, one object a line.

A line is ``x1 y1 x2 y2 x3 y3 x4 y4 class difficult``: the four corners of
the object's oriented box in the image's pixels, clockwise, then its class
(spaces written as ``-``, as DOTA spells ``storage-tank``) and the
``difficult`` flag (0 for pseudo-labels). Lines with fewer fields, such as
DOTA's ``imagesource:`` and ``gsd:`` headers, are not objects.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fiftyone.core.utils as fou
import numpy as np

from .engine.oriented_boxes import OrientedBox, from_corners
from .engine.remote import display_name
from .geo import check_detections_field
from .oriented import detection_oriented_box


@dataclass(frozen=True)
class DotaObject:
    """One line of a DOTA file: its ``box``, ``label`` and ``difficult`` flag."""

    box: OrientedBox
    label: str
    difficult: int = 0


def dota_label(class_name: str) -> str:
    """A class name as DOTA writes it: words joined by ``-``
    (``storage tank`` -> ``storage-tank``)."""
    return "-".join(class_name.split())


def dota_line(box: OrientedBox, label: str, difficult: int = 0) -> str:
    """One object's line; corners to 0.1 px."""
    corners = " ".join(f"{v:.1f}" for v in box.corners.reshape(-1))
    return f"{corners} {dota_label(label)} {int(difficult)}"


def read_dota(path: str | os.PathLike) -> list[DotaObject]:
    """The objects of a DOTA file (header lines skipped).

    Raises:
        ValueError: a line whose corners are not numbers, naming the file and line.
    """
    objects = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) < 9:
                continue
            try:
                corners = np.array([float(v) for v in fields[:8]]).reshape(4, 2)
            except ValueError as e:
                raise ValueError(f"{path}, line {number}: corners must be numbers ({e})") from e
            difficult = int(fields[9]) if len(fields) > 9 else 0
            objects.append(DotaObject(from_corners(corners), fields[8], difficult))
    return objects


def export_dota(
    samples: Any,
    pred_field: str,
    output_dir: str | os.PathLike,
    progress: bool | Callable | None = None,
) -> dict[str, Any]:
    """Writes each sample's instances as DOTA oriented boxes, one
    ``<image name>.txt`` per sample (empty without instances) in
    ``output_dir``, in the sample's own pixels.

    Each box is the minimum-area rectangle of the instance's mask (see
    :func:`~diffuprompter_plugin.oriented.detection_oriented_box`; a
    detection without a mask gives its axis-aligned box). Files are named
    after the image (a URL's file name); samples whose images share a name
    get ``<name>_<sample id>.txt``. The files are written to a temporary
    folder first, so a failed export leaves ``output_dir`` as it was.

    Args:
        samples: a dataset or view with image metadata (width, height).
        pred_field: an ``fo.Detections`` field.
        output_dir: the folder of ``.txt`` files (created; same-named files replaced).

    Returns:
        ``{"path": output_dir, "files": n, "objects": n}``.

    Raises:
        ValueError: ``pred_field`` is not a Detections field, or a sample
            has no metadata, naming its file.
    """
    check_detections_field(samples, pred_field)
    output_dir = os.path.abspath(os.fspath(output_dir))
    names = [display_name(p) for p in samples.values("filepath")]
    shared = {n for n, count in Counter(names).items() if count > 1}
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".dota-", dir=parent)
    objects = 0
    try:
        with fou.ProgressBar(total=len(names), progress=progress) as pb:
            for sample, name in zip(pb(samples), names, strict=True):
                lines = _sample_lines(sample, pred_field)
                objects += len(lines)
                file = f"{name}_{sample.id}.txt" if name in shared else f"{name}.txt"
                with open(os.path.join(staging, file), "w") as f:
                    f.writelines(line + "\n" for line in lines)
        os.makedirs(output_dir, exist_ok=True)
        for file in os.listdir(staging):
            os.replace(os.path.join(staging, file), os.path.join(output_dir, file))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"path": output_dir, "files": len(names), "objects": objects}


def _sample_lines(sample: Any, pred_field: str) -> list[str]:
    metadata = sample.metadata
    if metadata is None or not metadata.width:
        raise ValueError(f"Sample '{sample.filepath}' has no metadata: run compute_metadata()")
    labels = sample[pred_field]
    return [
        dota_line(detection_oriented_box(det, metadata.width, metadata.height), det.label)
        for det in (labels.detections if labels is not None else [])
    ]
