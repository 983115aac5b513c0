"""Import of iSAID ground truth as patched instance-segmentation samples."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import fiftyone as fo
import fiftyone.core.utils as fou
import numpy as np

from .common import (
    AnnotationError,
    ImportReport,
    dataset_folder,
    read_image,
    run_import,
    windows,
)
from .polygons import polygon_rle, window_mask

ISAID_MAX_DETS = 1000
"""Detections kept per image and class by the iSAID devkit's evaluation."""


def load_coco(path: Path) -> tuple[dict, dict[int, str], dict[int, list]]:
    """Reads a COCO-style JSON: (images by id, category names by id,
    annotations by image id). Ids are resolved through the file's own
    ``categories``, never a fixed table.

    Raises:
        AnnotationError: unreadable JSON or missing keys, naming the file.
    """
    try:
        with open(path) as f:
            data = json.load(f)
        images = {im["id"]: im for im in data["images"]}
        names = {c["id"]: c["name"] for c in data["categories"]}
        by_image = defaultdict(list)
        for ann in data["annotations"]:
            if ann["category_id"] not in names:
                raise AnnotationError(
                    f"{path}: annotation {ann.get('id')} has unknown category_id "
                    f"{ann['category_id']}"
                )
            by_image[ann["image_id"]].append(ann)
    except (OSError, json.JSONDecodeError) as e:
        raise AnnotationError(f"Cannot read annotation file '{path}': {e}") from e
    except (KeyError, TypeError) as e:
        raise AnnotationError(f"'{path}' is not COCO instance JSON: missing {e}") from e
    return images, names, by_image


def polygons(ann: dict, path: Path) -> list[np.ndarray]:
    """The annotation's polygons as N x 2 float arrays.

    Raises:
        AnnotationError: not a list of flat, even-length, >= 3-point polygons.
    """
    segmentation = ann.get("segmentation")
    if not isinstance(segmentation, list) or not segmentation:
        raise AnnotationError(f"{path}: annotation {ann.get('id')} has no polygon segmentation")
    shapes = []
    for poly in segmentation:
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            raise AnnotationError(f"{path}: annotation {ann.get('id')} has a malformed polygon")
        shapes.append(np.asarray(poly, dtype=np.float64).reshape(-1, 2))
    return shapes


def instance_detections(
    anns: list[dict],
    names: dict[int, str],
    path: Path,
    window: tuple[int, int, int, int],
    image_size: tuple[int, int],
    min_area: int,
) -> list[fo.Detection]:
    """The instances of one window (x0, y0, x1, y1) of a ``image_size``
    (width, height) image, rasterised as pycocotools does (see
    :mod:`.polygons`) and clipped to the window; fragments under
    ``min_area`` pixels are dropped.

    Each keeps an ``area``, which pycocotools' AP_S/AP_M/AP_L bin by: the
    annotation's own ``area`` when the window is the whole image and the
    file gives one (as pycocotools takes it), else the pixel count of the
    clipped mask (a patch's cut object has no official area).
    """
    x0, y0, x1, y1 = window
    width, height = x1 - x0, y1 - y0
    whole = window == (0, 0, *image_size)
    detections = []
    for ann in anns:
        bx, by, bw, bh = ann["bbox"]
        if bx >= x1 or by >= y1 or bx + bw <= x0 or by + bh <= y0:
            continue
        mask = window_mask(polygon_rle(polygons(ann, path), *image_size), window)
        area = int(mask.sum())
        if area < min_area:
            continue
        ys, xs = np.nonzero(mask)
        left, top, right, bottom = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        detections.append(
            fo.Detection(
                label=names[ann["category_id"]],
                bounding_box=[
                    left / width,
                    top / height,
                    (right - left) / width,
                    (bottom - top) / height,
                ],
                mask=mask[top:bottom, left:right],
                iscrowd=int(ann.get("iscrowd", 0)),
                area=float(ann["area"]) if whole and ann.get("area") is not None else area,
                source_id=ann.get("id"),
            )
        )
    return detections


class PatchSettings(NamedTuple):
    """How :func:`import_isaid` cuts and keeps patches (its arguments)."""

    split: str
    size: int | None
    overlap: int
    min_area: int
    keep_empty: bool
    path: Path


def import_isaid(
    root: str | os.PathLike,
    split: str,
    name: str | None = None,
    annotations: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    patch_dir: str | os.PathLike | None = None,
    patch_size: int | None = 512,
    overlap: int = 0,
    min_area: int = 10,
    keep_empty: bool = True,
    progress: bool | Callable | None = None,
) -> ImportReport:
    """Imports an iSAID split as ``patch_size`` patches with instance masks,
    or as full scenes with ``patch_size=None``.

    Layout: ``<root>/<split>/Annotations/iSAID_<split>.json`` and the DOTA
    images in ``<root>/<split>/images/`` (both overridable). Patches step by
    ``patch_size - overlap``; edge patches are shifted inside the image as in
    the official devkit, and images smaller than a patch stay whole. Each
    patch sample has ``gt_masks`` (labels are iSAID's own category names),
    ``source_image``, ``offset`` [x, y], ``source_size`` [w, h] and ``split``.
    Patches are written to ``patch_dir``, default ``<FiftyOne's dataset
    dir>/__patches__/<dataset id>``. Missing or unreadable images are
    reported in ``skipped``. Full-scene
    samples are the original images (nothing is written), with offset [0, 0],
    so evaluation can run on scenes as well as on patches.

    Masks come from the JSON's polygons, not from the instance PNGs (which
    the polygons were traced from): each is rasterised on the full image as
    pycocotools does and then cut to the patch, so a mask equals what every
    COCO tool decodes from the same JSON. The dataset's
    ``info["max_dets"]`` is set to the devkit's 1000 detections per image,
    which :func:`~diffuprompter_plugin.evaluation.evaluate_pseudo_labels`
    uses by default.

    Raises:
        AnnotationError: malformed JSON or polygons (nothing is written).
    """
    root = Path(root)
    annotations = Path(annotations or root / split / "Annotations" / f"iSAID_{split}.json")
    image_dir = Path(image_dir or root / split / "images")
    name = name or f"isaid-{split}"
    images, names, by_image = load_coco(annotations)
    settings = PatchSettings(split, patch_size, overlap, min_area, keep_empty, annotations)
    return run_import(
        name,
        partial(_patches, images, names, by_image, image_dir, patch_dir, settings, progress),
        info={"max_dets": ISAID_MAX_DETS},
    )


def _patches(
    images, names, by_image, image_dir, patch_dir, s: PatchSettings, progress, known, report
) -> Iterator[fo.Sample]:
    scene = s.size is None
    if not scene:
        patch_dir = (
            Path(patch_dir) if patch_dir else dataset_folder("__patches__", report.dataset_id)
        )
        patch_dir.mkdir(parents=True, exist_ok=True)
    with fou.ProgressBar(total=len(images), progress=progress) as pb:
        for image_id, info in images.items():
            pb.update()
            source = image_dir / info["file_name"]
            image = report.load(read_image, source)
            if image is None:
                continue
            height, width = image.shape[:2]
            for window in (
                [(0, 0, width, height)] if scene else windows(width, height, s.size, s.overlap)
            ):
                x0, y0, x1, y1 = window
                path = (
                    str(source)
                    if scene
                    else str(patch_dir / f"{source.stem}_{x0}_{y0}_{x1 - x0}x{y1 - y0}.png")
                )
                if path in known:
                    report.existing += 1
                    continue
                detections = instance_detections(
                    by_image.get(image_id, []),
                    names,
                    s.path,
                    window,
                    (width, height),
                    s.min_area,
                )
                if not detections and not s.keep_empty:
                    continue
                if not os.path.exists(path):
                    cv2.imwrite(path, image[y0:y1, x0:x1])
                yield _patch_sample(path, window, source, width, height, s.split, detections)


def _patch_sample(path, window, source, width, height, split, detections: list[Any]):
    x0, y0, x1, y1 = window
    return fo.Sample(
        filepath=path,
        metadata=fo.ImageMetadata(width=x1 - x0, height=y1 - y0),
        gt_masks=fo.Detections(detections=detections),
        source_image=str(source),
        offset=[x0, y0],
        source_size=[width, height],
        split=split,
    )
