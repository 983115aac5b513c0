"""A labelled dataset as a finished run leaves it: instance masks with the
quality signals on every detection, georeferenced, ready to review."""

from __future__ import annotations

import os

import fiftyone as fo
import numpy as np
from PIL import Image
from pyproj import CRS
from rasterio.transform import from_origin

SIZE = 40
"""Images are SIZE x SIZE pixels."""

SIGNALS = ("sam_iou", "region_iou", "stability", "heat_contrast", "draw_agreement")


def ring(size: int = 10, hole: int = 4) -> np.ndarray:
    """A size x size square mask with a centred hole x hole hole."""
    mask = np.ones((size, size), bool)
    start = (size - hole) // 2
    mask[start : start + hole, start : start + hole] = False
    return mask


def detection(label: str, col: int, row: int, mask: np.ndarray, quality: float, **attrs):
    """A detection whose box-cropped ``mask`` sits at pixel (col, row)."""
    height, width = mask.shape
    box = [col / SIZE, row / SIZE, width / SIZE, height / SIZE]
    signals = {s: round(min(1.0, quality + 0.05 * k), 4) for k, s in enumerate(SIGNALS)}
    return fo.Detection(
        label=label,
        bounding_box=box,
        mask=mask,
        confidence=round(0.5 + quality / 2, 4),
        quality=quality,
        drawn_label=label,
        drawn_box=list(box),
        **{**signals, **attrs},
    )


def reviewed_dataset(folder, images: int = 3, persistent: bool = False) -> fo.Dataset:
    """``images`` samples, each with four instances in ``dp``: ship, tank,
    ship, tank at qualities spread over [0.1, 0.95], the first a ring (a hole), all
    unreviewed; each sample georeferenced (UTM 33N, 2 m pixels)."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(images):
        qualities = np.round(np.linspace(0.1, 0.95, 4 * images)[i::images], 4)
        dets = [
            detection("ship", 2, 2, ring(), float(qualities[0])),
            detection("tank", 20, 2, np.ones((8, 6), bool), float(qualities[1])),
            detection("ship", 2, 20, np.ones((6, 6), bool), float(qualities[2])),
            detection("tank", 20, 20, np.ones((9, 9), bool), float(qualities[3])),
        ]
        samples.append(scene_sample(folder, i, rng, dp=fo.Detections(detections=dets)))
    return _dataset(samples, persistent)


def scene_sample(folder, i: int, rng: np.random.Generator, **fields) -> fo.Sample:
    """Sample ``i``: a random SIZE x SIZE image in ``folder``, georeferenced
    (UTM 33N, 2 m pixels, scenes 100 m apart), with ``fields``."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"scene_{i}.png")
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
    transform = list(from_origin(500_000 + 100 * i, 5_000_000, 2.0, 2.0))[:6]
    crs = CRS.from_epsg(32633).to_wkt()
    return fo.Sample(filepath=path, crs=crs, transform=transform, **fields)


def _dataset(samples: list[fo.Sample], persistent: bool = False) -> fo.Dataset:
    dataset = fo.Dataset(persistent=persistent)
    dataset.add_samples(samples)
    dataset.compute_metadata()
    return dataset


def tag(dataset: fo.Dataset, label_ids, tag_name: str) -> None:
    """Tags labels of ``dp`` as a person does in the App (select, then tag)."""
    dataset.select_labels(ids=list(label_ids), fields="dp").tag_labels(
        [tag_name], label_fields=["dp"]
    )


def edit(dataset: fo.Dataset, label_id: str, **changes) -> None:
    """Changes a label of ``dp`` as a person does (the App's Annotate tab,
    CVAT through ``annotate()``, or Python): e.g. ``label=`` or
    ``bounding_box=``."""
    for sample in dataset.select_labels(ids=[label_id], fields="dp"):
        sample = dataset[sample.id]
        for det in sample.dp.detections:
            if det.id == label_id:
                for key, value in changes.items():
                    det[key] = value
        sample.save()


def ids_by_quality(dataset: fo.Dataset) -> list[tuple[float, str, str]]:
    """(quality, class, id) of every label of ``dp``, lowest quality first."""
    rows = zip(
        *(
            [v for row in dataset.values(f"dp.detections.{k}") for v in row]
            for k in ("quality", "label", "id")
        ),
        strict=True,
    )
    return sorted(rows)


def crowded_dataset(folder, images: int = 8, per_image: int = 50) -> fo.Dataset:
    """``images`` georeferenced samples of ``per_image`` small instances
    each in ``dp_instances`` (ship and tank alternating), quality uniform in
    [0, 1], and ``truth``: whether a person would accept the label (quality
    at least 0.3)."""
    rng = np.random.default_rng(5)
    samples = []
    for i in range(images):
        dets = []
        for k in range(per_image):
            quality = float(np.round(rng.random(), 4))
            col, row = (k % 7) * 5, (k // 7) * 5
            det = detection("ship" if k % 2 else "tank", col, row, np.ones((4, 4), bool), quality)
            det["truth"] = quality >= 0.3
            dets.append(det)
        labels = fo.Detections(detections=dets)
        samples.append(scene_sample(folder, i, rng, dp_instances=labels))
    return _dataset(samples)
