"""Import of the DLR 3K Munich vehicle frames as tiled vehicle images."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

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


def parse_samp(path: Path) -> list[np.ndarray]:
    """Oriented vehicle boxes of a ``.samp`` file as 4 x 2 corner arrays.

    Lines are ``id type cx cy half_width half_height angle_degrees``; lines
    starting with ``#`` or ``@`` and blank lines are headers.

    Raises:
        AnnotationError: a malformed line, naming the file and line.
    """
    boxes = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text[0] in "#@":
            continue
        try:
            cx, cy, hw, hh, angle = map(float, text.split()[2:7])
        except ValueError as e:
            raise AnnotationError(f"{path}:{number}: malformed vehicle line {line!r}") from e
        theta = math.radians(angle)
        axis_u = np.array([math.cos(theta), math.sin(theta)]) * hw
        axis_v = np.array([-math.sin(theta), math.cos(theta)]) * hh
        center = np.array([cx, cy])
        boxes.append(
            np.stack(
                [
                    center - axis_u - axis_v,
                    center + axis_u - axis_v,
                    center + axis_u + axis_v,
                    center - axis_u + axis_v,
                ]
            )
        )
    return boxes


def import_dlr_munich(
    root: str | os.PathLike,
    name: str,
    tile_dir: str | os.PathLike | None = None,
    tile_size: int = 512,
    overlap: int = 0,
    progress: bool | Callable | None = None,
) -> ImportReport:
    """Tiles the DLR Munich frames and imports the tiles holding vehicles.

    Each tile is a sample with ``ground_truth`` = vehicle, the tile's oriented
    vehicle boxes as ``gt_vehicles`` polylines, and its provenance
    (``source_image``, ``offset``). Tiles are written to ``tile_dir``,
    default ``<FiftyOne's dataset dir>/__tiles__/<dataset id>``. Frames
    without ``.samp`` files are skipped and reported; a malformed ``.samp``
    line stops the import with nothing written.
    """
    root = Path(root)
    frames = sorted(p for p in root.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not frames:
        raise ValueError(f"'{root}' holds no DLR Munich frames (*.JPG)")
    return run_import(name, partial(_tiles, frames, tile_dir, tile_size, overlap, progress))


def _tiles(frames, tile_dir, size, overlap, progress, known, report) -> Iterator[fo.Sample]:
    tile_dir = Path(tile_dir) if tile_dir else dataset_folder("__tiles__", report.dataset_id)
    tile_dir.mkdir(parents=True, exist_ok=True)
    with fou.ProgressBar(total=len(frames), progress=progress) as pb:
        for frame in frames:
            pb.update()
            samp_files = sorted(frame.parent.glob(f"{frame.stem}_*.samp"))
            if not samp_files:
                report.skipped.append((str(frame), "no .samp annotation files"))
                continue
            boxes = [box for f in samp_files for box in parse_samp(f)]
            image = report.load(read_image, frame)
            if image is None:
                continue
            height, width = image.shape[:2]
            centers = np.array([b.mean(0) for b in boxes])
            for x0, y0, x1, y1 in windows(width, height, size, overlap):
                inside = [
                    b
                    for b, (cx, cy) in zip(boxes, centers, strict=True)
                    if x0 <= cx < x1 and y0 <= cy < y1
                ]
                if not inside:
                    continue
                path = str(tile_dir / f"{frame.stem}_{x0}_{y0}.jpg")
                if path in known:
                    report.existing += 1
                    continue
                cv2.imwrite(path, image[y0:y1, x0:x1])
                w, h = x1 - x0, y1 - y0
                polylines = [
                    fo.Polyline(
                        label="vehicle",
                        closed=True,
                        filled=True,
                        points=[((b - (x0, y0)) / (w, h)).clip(0, 1).tolist()],
                    )
                    for b in inside
                ]
                yield fo.Sample(
                    filepath=path,
                    metadata=fo.ImageMetadata(width=w, height=h),
                    ground_truth=fo.Classification(label="vehicle"),
                    gt_vehicles=fo.Polylines(polylines=polylines),
                    source_collection="DLR Munich",
                    source_class="vehicle",
                    mapping="direct",
                    source_image=str(frame),
                    offset=[x0, y0],
                )
