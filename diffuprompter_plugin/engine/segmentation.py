"""Prompting SAM with the binarised heatmaps and splitting instances (section 2.2.3)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from .config import DEFAULT_SAM_MODEL, DiffuPrompterConfig, model_source
from .crf import binary_map
from .device import default_dtype, resolve_device
from .errors import InputImageError
from .image import ImageLike, read_rgb
from .mask_runs import MaskRuns
from .prompts import Region, components, mask_box, regions
from .raster import Box
from .sam import load_sam


class Instance:
    """One object found in an image.

    Attributes:
        label: the class name.
        runs: its mask, cropped to its box, as runs of pixels
            (:class:`~.mask_runs.MaskRuns`): instances of a large scene take
            memory by their outline, not by their box or the scene.
        box: (x0, y0, x1, y1) pixels, x1/y1 exclusive.
        score: mean heatmap value inside the mask times SAM's predicted IoU of
            the chosen candidate, in [0, 1].

    Args:
        mask: the (y1 - y0) x (x1 - x0) bool mask inside the box, or its runs.
    """

    __slots__ = ("label", "runs", "box", "score")

    def __init__(self, label: str, mask: np.ndarray | MaskRuns, box: Box, score: float) -> None:
        self.label = label
        self.runs = mask if isinstance(mask, MaskRuns) else MaskRuns.encode(mask)
        self.box = box
        self.score = score

    def __repr__(self) -> str:
        return f"Instance({self.label!r}, {self.box}, area={self.area}, score={self.score:.3g})"

    @classmethod
    def from_full_mask(cls, label: str, mask: np.ndarray, score: float) -> Instance:
        """The instance of a non-empty H x W image-size mask, cropped to its box."""
        x0, y0, x1, y1 = box = mask_box(mask)
        return cls(label, mask[y0:y1, x0:x1], box, score)

    @property
    def mask(self) -> np.ndarray:
        """The (y1 - y0) x (x1 - x0) bool mask inside the box, decoded anew
        on each access."""
        return self.runs.decode()

    @property
    def area(self) -> int:
        """Pixel count of the mask."""
        return self.runs.area

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask pasted into an all-False ``shape`` (H, W) array."""
        full = np.zeros(shape, bool)
        x0, y0, x1, y1 = self.box
        full[y0:y1, x0:x1] = self.mask
        return full

    def shifted(self, dx: int, dy: int) -> Instance:
        """The same instance with its box moved by (dx, dy) pixels."""
        x0, y0, x1, y1 = self.box
        return Instance(self.label, self.runs, (x0 + dx, y0 + dy, x1 + dx, y1 + dy), self.score)


Thresholds = float | Mapping[str, float] | None


class SamPrompter:
    """Turns heatmaps into instances with SAM; needs no diffusion model, so
    stored heatmaps can be re-thresholded cheaply.

    Attributes:
        sources: ``sam_model`` and ``sam_checkpoint`` as given to
            :meth:`from_pretrained`; empty for a prompter built otherwise.

    Args:
        sam: a ``segment_anything`` Sam model.
        config: method settings (threshold, CRF, min_area, multimask).
        device: where SAM runs.
        dtype: SAM's compute dtype. Below float32, SAM runs under
            ``torch.autocast`` with its weights kept in float32:
            ``segment_anything``'s prompt encoder does not take half weights.
    """

    sources: Mapping[str, str | None] = MappingProxyType({})

    def __init__(
        self,
        sam: Any,
        config: DiffuPrompterConfig,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from segment_anything import SamPredictor

        self.predictor = SamPredictor(sam)
        self.config = config
        self.device = device
        self.dtype = dtype

    @classmethod
    def from_pretrained(
        cls,
        sam_model: str | os.PathLike | Any = DEFAULT_SAM_MODEL,
        sam_checkpoint: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        config: DiffuPrompterConfig | None = None,
        dtype: torch.dtype | None = None,
    ) -> SamPrompter:
        """Loads SAM (see :func:`~diffuprompter_plugin.engine.sam.load_sam`); dtype
        defaults to float16 on GPU, float32 on CPU. The prompter's ``sources``
        record ``sam_model`` and ``sam_checkpoint`` when they are ids or paths."""
        device = resolve_device(device)
        sam = load_sam(sam_model, sam_checkpoint, device)
        prompter = cls(
            sam, config or DiffuPrompterConfig(), device, dtype or default_dtype(device)
        )
        prompter.sources = {
            "sam_model": model_source(sam_model),
            "sam_checkpoint": model_source(sam_checkpoint),
        }
        return prompter

    def thresholds_for(self, class_names: list[str], thresholds: Thresholds) -> dict[str, float]:
        """Per-class gamma: a number for all, a dict (missing classes use the
        config's threshold), or None for the config's threshold."""
        if thresholds is None or isinstance(thresholds, (int, float)):
            value = self.config.threshold if thresholds is None else float(thresholds)
            return dict.fromkeys(class_names, value)
        return {name: float(thresholds.get(name, self.config.threshold)) for name in class_names}

    def segment(
        self,
        image: ImageLike,
        heatmaps: Mapping[str, np.ndarray],
        thresholds: Thresholds = None,
    ) -> list[Instance]:
        """Instances of every class from its heatmap.

        Per class: binarise (with CRF), prompt SAM with each region's min box
        and interior point, keep the candidate with the highest IoU to that
        region, split the union of kept masks into connected instances and
        drop those under ``min_area``. Pixels claimed by several classes go
        to the class with the highest heatmap value there. No instance
        covers a nodata pixel of a file (see :meth:`prompt`).
        """
        rgb, valid = read_rgb(image)
        gammas = self.thresholds_for(list(heatmaps), thresholds)
        binaries = binary_maps(rgb, heatmaps, gammas, self.config)
        return self.prompt(rgb, heatmaps, binaries, valid)

    @torch.inference_mode()
    def prompt(
        self,
        rgb: np.ndarray,
        heatmaps: Mapping[str, np.ndarray],
        binaries: Mapping[str, np.ndarray],
        valid: np.ndarray | None = None,
    ) -> list[Instance]:
        """The SAM stage of :meth:`segment`, from already binarised maps.

        The valid-pixel rule, on every path (whole images, tiles, re-
        thresholding): with ``valid`` (H x W bool, False on nodata and
        non-finite pixels), SAM is prompted from valid pixels only, its
        masks lose their invalid pixels before they are split into instances
        and ``min_area`` applies, and an image without valid pixels gets no
        instance.
        """
        if valid is not None:
            binaries = {label: binary & valid for label, binary in binaries.items()}
        image_set = False
        found_masks = []
        for label, binary in binaries.items():
            found = regions(binary, self.config.min_area)
            if not found:
                continue
            with self.precision():
                if not image_set:
                    self.set_image(rgb)
                    image_set = True
                masks, ious = self.predict(found)
            union = masks.any(0) if valid is None else masks.any(0) & valid
            for mask in components(union, self.config.min_area):
                iou = max(ious[i] for i in range(len(found)) if (masks[i] & mask).any())
                found_masks.append((label, mask, iou))
        return self._resolve(found_masks, heatmaps)

    def set_image(self, rgb: np.ndarray) -> None:
        """Gives SAM the image.

        Raises:
            InputImageError: SAM's resize would leave a side under one pixel
                (a very elongated image); the message names its size.
        """
        transform = self.predictor.transform
        height, width = rgb.shape[:2]
        if min(transform.get_preprocess_shape(height, width, transform.target_length)) < 1:
            raise InputImageError(
                f"Image of {width}x{height} px is too elongated for SAM, which resizes its "
                f"longest side to {transform.target_length} px; crop it, or lower tile_size "
                "so that it is labelled in tiles"
            )
        self.predictor.set_image(rgb)

    def precision(self) -> torch.autocast:
        """Autocast to :attr:`dtype` for SAM's forward passes (off at float32)."""
        return torch.autocast(
            self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32
        )

    def predict(self, found: list[Region]) -> tuple[np.ndarray, list[float]]:
        """One batched SAM call for all regions of a class.

        Returns:
            (R, H, W) bool masks, the candidate per region with the highest
            IoU to the region, and SAM's predicted IoU of each.
        """
        size = self.predictor.original_size
        transform = self.predictor.transform
        boxes = torch.tensor([r.box for r in found], dtype=torch.float, device=self.device)
        points = torch.tensor([[r.point] for r in found], dtype=torch.float, device=self.device)
        labels = torch.ones(points.shape[:2], dtype=torch.int, device=self.device)
        masks, iou_predictions, _ = self.predictor.predict_torch(
            point_coords=transform.apply_coords_torch(points, size),
            point_labels=labels,
            boxes=transform.apply_boxes_torch(boxes, size),
            multimask_output=self.config.multimask,
        )
        targets = torch.from_numpy(np.stack([r.mask for r in found])).to(self.device)
        best = select_candidates(masks, targets)
        rows = torch.arange(len(found), device=self.device)
        chosen = masks[rows, best].cpu().numpy()
        return chosen, iou_predictions[rows, best].clamp(0, 1).float().cpu().tolist()

    def _resolve(
        self, found: list[tuple[str, np.ndarray, float]], heatmaps: Mapping[str, np.ndarray]
    ) -> list[Instance]:
        """Gives each pixel claimed by several classes to the class with the
        highest heatmap value there, then scores the instances.

        Args:
            found: (class, H x W mask, SAM's IoU) of each connected mask.
        """
        labels = sorted({label for label, _, _ in found})
        if len(labels) > 1:
            stack = np.stack([heatmaps[name] for name in labels])
            claimed = np.zeros_like(stack, dtype=bool)
            for label, mask, _ in found:
                claimed[labels.index(label)] |= mask
            owner = np.where(claimed, stack, -1.0).argmax(0)
            found = [(lb, m & (owner == labels.index(lb)), iou) for lb, m, iou in found]
        kept = []
        for label, mask, iou in found:
            if mask.sum() < self.config.min_area:
                continue
            score = float(heatmaps[label][mask].mean() * iou)
            kept.append(Instance.from_full_mask(label, mask, score))
        return kept


def zero_nodata(heatmaps: Mapping[str, np.ndarray], valid: np.ndarray | None) -> None:
    """The valid-pixel rule for heatmaps, on every path: 0 where ``valid``
    (H x W bool) is False, in place; nothing to do when ``valid`` is None."""
    if valid is not None:
        for heatmap in heatmaps.values():
            heatmap[~valid] = 0


def binary_maps(
    rgb: np.ndarray,
    heatmaps: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float],
    config: DiffuPrompterConfig,
) -> dict[str, np.ndarray]:
    """Eq. 10 for every class: ``{class: H x W bool}``. A module-level
    function, so DenseCRF can run in the CRF pool's processes."""
    for label, heatmap in heatmaps.items():
        if heatmap.shape != rgb.shape[:2]:
            raise ValueError(f"Heatmap '{label}' is {heatmap.shape}, image is {rgb.shape[:2]}")
    return {
        label: binary_map(rgb, heatmap, thresholds[label], config)
        for label, heatmap in heatmaps.items()
    }


def select_candidates(candidates: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Index of the candidate with the highest IoU to each target.

    Args:
        candidates: (R, C, H, W) bool SAM masks.
        targets: (R, H, W) bool binarised regions.

    Returns:
        (R,) long indices into C.
    """
    targets = targets[:, None]
    inter = (candidates & targets).flatten(2).sum(-1).float()
    union = (candidates | targets).flatten(2).sum(-1).float()
    return (inter / union.clamp_min(1)).argmax(1)
