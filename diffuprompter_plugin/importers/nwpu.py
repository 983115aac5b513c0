"""Import of NWPU VHR-10: positive images with boxes (and masks), negatives."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from functools import partial
from operator import itemgetter
from pathlib import Path

import fiftyone as fo

from .common import (
    AnnotationError,
    ImportReport,
    image_metadata,
    is_image,
    new_files,
    run_import,
)
from .isaid import instance_detections, load_coco

NWPU_CLASSES = {
    1: "airplane",
    2: "ship",
    3: "storage tank",
    4: "baseball diamond",
    5: "tennis court",
    6: "basketball court",
    7: "ground track field",
    8: "harbor",
    9: "bridge",
    10: "vehicle",
}
"""Class ids of the ground-truth txt files (torchgeo's VHR10 table)."""

BOX_LINE = re.compile(
    r"^\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*,\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*,\s*(\d+)\s*$"
)


def parse_boxes(path: Path, width: int, height: int) -> list[fo.Detection]:
    """Boxes of a ``(x1,y1),(x2,y2),c`` ground-truth file (spaces allowed).

    Raises:
        AnnotationError: a malformed line or unknown class, naming file and line.
    """
    detections = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        match = BOX_LINE.match(line.strip())
        if match is None:
            raise AnnotationError(f"{path}:{number}: malformed box line {line!r}")
        x1, y1, x2, y2, class_id = map(int, match.groups())
        if class_id not in NWPU_CLASSES:
            raise AnnotationError(f"{path}:{number}: unknown class id {class_id}")
        detections.append(
            fo.Detection(
                label=NWPU_CLASSES[class_id],
                bounding_box=[x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height],
            )
        )
    return detections


def import_nwpu_vhr10(
    root: str | os.PathLike,
    name: str = "nwpu-vhr10",
    coco_json: str | os.PathLike | None = None,
    progress: bool | Callable | None = None,
) -> ImportReport:
    """Imports NWPU VHR-10 from its released folder.

    Layout: ``positive image set/``, ``negative image set/`` and
    ``ground truth/NNN.txt``. Positive samples get ``gt_boxes``; with the
    instance-mask COCO JSON (``coco_json``, or ``annotations.json`` in the
    root) they also get ``gt_masks``, rasterised as pycocotools does (see
    :mod:`.polygons`). A mask JSON is a split: positives it does not list
    (e.g. the 520 training images when importing RSPrompter's
    ``NWPU_instances_val.json``) are left out and listed in ``skipped``, so
    that no image without mask ground truth is evaluated. Negatives are
    tagged ``negative`` with empty ground truth (they have no objects).
    ``nwpu_set`` and ``nwpu_id`` (e.g. ``positive/001``) identify a sample,
    since both sets number their files from 001.

    Raises:
        ValueError: the layout is not NWPU VHR-10's.
        AnnotationError: malformed txt lines or JSON (nothing is written).
    """
    root = Path(root)
    sets = {s: root / f"{s} image set" for s in ("positive", "negative")}
    if not sets["positive"].is_dir():
        raise ValueError(f"'{root}' is not NWPU VHR-10: no 'positive image set' folder")
    coco_json = Path(coco_json) if coco_json else root / "annotations.json"
    masks = load_coco(coco_json) if coco_json.is_file() else None
    return run_import(name, partial(_samples, root, sets, masks, coco_json, progress))


def _samples(root, sets, masks, coco_json, progress, known, report) -> Iterator[fo.Sample]:
    files = [
        (image_set, folder / f)
        for image_set, folder in sets.items()
        if folder.is_dir()
        for f in sorted(os.listdir(folder))
        if is_image(f)
    ]
    by_name = {}
    if masks is not None:
        images, names, by_image = masks
        names = {i: n.replace("_", " ") for i, n in names.items()}  # storage_tank -> storage tank
        by_name = {im["file_name"]: (by_image.get(i, []), names) for i, im in images.items()}
    for (image_set, path), metadata in new_files(
        files, itemgetter(1), image_metadata, known, report, progress
    ):
        sample = fo.Sample(
            filepath=str(path),
            metadata=metadata,
            tags=[image_set],
            nwpu_set=image_set,
            nwpu_id=f"{image_set}/{path.stem}",
            gt_boxes=fo.Detections(),
        )
        size = (metadata.width, metadata.height)
        if image_set == "positive":
            truth = root / "ground truth" / f"{path.stem}.txt"
            if not truth.is_file():
                report.skipped.append((str(path), f"no ground truth file {truth}"))
                continue
            sample["gt_boxes"] = fo.Detections(detections=parse_boxes(truth, *size))
        if masks is not None:
            anns, names = [], {}
            if image_set == "positive":  # negatives reuse the positives' file names
                if path.name not in by_name:
                    report.skipped.append((str(path), f"not in the mask JSON {coco_json}"))
                    continue
                anns, names = by_name[path.name]
            window = (0, 0, *size)
            sample["gt_masks"] = fo.Detections(
                detections=instance_detections(anns, names, coco_json, window, size, 1)
            )
        yield sample
