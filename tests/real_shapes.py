"""A COCO instance set with the polygon shapes of real annotations: concave
outlines, thin diagonal structures, many-vertex traced contours with
fractional coordinates, instances of two polygons, and small, medium and
large objects (COCO's 32² and 96² pixel area bounds)."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

IMAGES = {"001.jpg": (240, 160), "002.jpg": (200, 150), "003.jpg": (160, 120)}
"""file name -> (width, height)."""

CATEGORIES = ("airplane", "ship", "storage_tank", "harbor", "bridge", "vehicle")


def _traced(cx, cy, radius, vertices, rng, decimals=2):
    """A traced blob contour: many vertices, fractional, radius noise."""
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    r = radius * (1 + 0.12 * np.sin(3 * angles) + rng.uniform(-0.05, 0.05, vertices))
    return np.round(np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1), decimals)


def _airplane(cx, cy, size):
    """Concave cross-shaped outline (fuselage, wings, tail), 12 vertices."""
    s = size / 10
    outline = [
        (0, -5), (0.8, -3.9), (0.8, -1), (5, 0.3), (5, 1.3), (0.8, 0.8),
        (0.8, 3.3), (2.1, 4.3), (2.1, 5), (-2.1, 5), (-2.1, 4.3), (-0.8, 3.3),
        (-0.8, 0.8), (-5, 1.3), (-5, 0.3), (-0.8, -1), (-0.8, -3.9),
    ]  # fmt: skip
    return np.array([(cx + x * s, cy + y * s) for x, y in outline]).round(1)


def _thin_diagonal(x0, y0, x1, y1, width):
    """A bridge: a long quadrilateral ``width`` pixels across, at an angle."""
    direction = np.array([x1 - x0, y1 - y0], float)
    normal = np.array([-direction[1], direction[0]]) / np.linalg.norm(direction) * width / 2
    a, b = np.array([x0, y0], float), np.array([x1, y1], float)
    return np.round(np.array([a + normal, b + normal, b - normal, a - normal]), 2)


def _harbor(x, y, w, h):
    """A pier-comb outline: concave, with 3 narrow docks."""
    d = w / 7
    points = [(x, y + h), (x, y), (x + d, y), (x + d, y + h * 0.6)]
    for k in (2, 4):
        points += [(x + k * d, y + h * 0.6), (x + k * d, y), (x + (k + 1) * d, y)]
        points += [(x + (k + 1) * d, y + h * 0.6)]
    points += [(x + 6 * d, y + h * 0.6), (x + 6 * d, y), (x + w, y), (x + w, y + h)]
    return np.round(np.array(points, float), 1)


def instances(rng: np.random.Generator) -> dict[str, list[tuple[str, list[np.ndarray]]]]:
    """file name -> [(category, polygons)]."""
    return {
        "001.jpg": [
            ("harbor", [_harbor(20.5, 30.25, 130, 110)]),  # large, concave
            ("airplane", [_airplane(190.3, 40.7, 50)]),  # medium, concave
            ("storage_tank", [_traced(200.1, 120.4, 14.3, 64, rng)]),  # many vertices
            ("vehicle", [_traced(170.6, 140.2, 3.1, 9, rng, 1)]),  # small
        ],
        "002.jpg": [
            ("bridge", [_thin_diagonal(5.5, 140.2, 190.7, 8.9, 2.6)]),  # thin, long
            ("ship", [_traced(60.2, 40.8, 9.7, 40, rng), _traced(80.3, 44.1, 5.2, 24, rng)]),
            ("storage_tank", [_traced(150.4, 110.6, 21.9, 80, rng, 3)]),
            ("vehicle", [_thin_diagonal(100.3, 60.1, 108.9, 66.7, 3.3)]),
        ],
        "003.jpg": [
            ("airplane", [_airplane(60.4, 60.2, 90)]),
            ("vehicle", [_traced(130.7, 20.3, 4.4, 11, rng, 1)]),
            ("vehicle", [_traced(141.2, 23.9, 4.1, 11, rng, 1)]),
            ("ship", [_traced(130.5, 95.5, 12.2, 56, rng)]),
        ],
    }


def coco_json(seed: int = 0) -> dict:
    """The ground truth as COCO JSON (image id = file number - 1, ``area``
    = pixel count as pycocotools rasterises the polygons)."""
    rng = np.random.default_rng(seed)
    names = {name: i + 1 for i, name in enumerate(CATEGORIES)}
    images, annotations = [], []
    for image_id, (file_name, objects) in enumerate(instances(rng).items()):
        width, height = IMAGES[file_name]
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for category, shapes in objects:
            segmentation = [s.ravel().tolist() for s in shapes]
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": names[category],
                    "segmentation": segmentation,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i, "name": n} for n, i in names.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def predictions(gt: dict, seed: int = 1) -> list[dict]:
    """pycocotools results (RLE, distinct scores, no ``bbox``): each ground
    truth redrawn with jittered, shifted vertices (a few missed), plus false
    positives of real shapes."""
    rng = np.random.default_rng(seed)
    sizes = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    results = []
    for ann in gt["annotations"]:
        if rng.random() < 0.15:
            continue
        width, height = sizes[ann["image_id"]]
        shift = rng.uniform(-2.5, 2.5, 2)
        polys = [
            (np.asarray(p).reshape(-1, 2) + shift + rng.uniform(-1.2, 1.2, (len(p) // 2, 2)))
            .round(2)
            .ravel()
            .tolist()
            for p in ann["segmentation"]
        ]
        results.append((ann["image_id"], ann["category_id"], polys, width, height))
    for image_id, (width, height) in sizes.items():
        blob = _traced(width * 0.3, height * 0.7, rng.uniform(3, 25), 30, rng)
        results.append((image_id, int(rng.integers(1, 7)), [blob.ravel().tolist()], width, height))
    scores = rng.permutation(len(results)) / len(results) + 0.01
    out = []
    for (image_id, category_id, polys, width, height), score in zip(results, scores, strict=True):
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append(
            {
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": rle,
                "score": float(score),
            }
        )
    return out
