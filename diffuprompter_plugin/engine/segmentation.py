"""Prompting SAM with the binarised heatmaps and splitting instances (section 2.2.3)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

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
from .signals import Signals, draw_agreement, heat_contrast, stability_scores


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
        signals: its quality signals (:mod:`.signals`), None when unknown.

    Args:
        mask: the (y1 - y0) x (x1 - x0) bool mask inside the box, or its runs.
    """

    __slots__ = ("label", "runs", "box", "score", "signals")

    def __init__(
        self,
        label: str,
        mask: np.ndarray | MaskRuns,
        box: Box,
        score: float,
        signals: Signals | None = None,
    ) -> None:
        self.label = label
        self.runs = mask if isinstance(mask, MaskRuns) else MaskRuns.encode(mask)
        self.box = box
        self.score = score
        self.signals = signals

    def __repr__(self) -> str:
        return f"Instance({self.label!r}, {self.box}, area={self.area}, score={self.score:.3g})"

    @classmethod
    def from_full_mask(
        cls, label: str, mask: np.ndarray, score: float, signals: Signals | None = None
    ) -> Instance:
        """The instance of a non-empty H x W image-size mask, cropped to its box."""
        x0, y0, x1, y1 = box = mask_box(mask)
        return cls(label, mask[y0:y1, x0:x1], box, score, signals)

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
        box = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
        return Instance(self.label, self.runs, box, self.score, self.signals)


Thresholds = float | Mapping[str, float] | None


class Candidates(NamedTuple):
    """SAM's chosen candidate of each of R regions of a class.

    Attributes:
        masks: (R, H, W) bool.
        sam_iou: (R,) SAM's predicted IoU, clipped to [0, 1].
        region_iou: (R,) IoU with the region (the selection criterion).
        stability: (R,) SAM's stability score.
    """

    masks: np.ndarray
    sam_iou: np.ndarray
    region_iou: np.ndarray
    stability: np.ndarray


Found = tuple[str, np.ndarray, Candidates, int]
"""(class, H x W mask, its class's candidates, the index of the region
whose candidate SAM predicts best among those that make up the mask)."""


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
        spreads: Mapping[str, np.ndarray] | None = None,
    ) -> list[Instance]:
        """Instances of every class from its heatmap.

        Per class: binarise (with CRF), prompt SAM with each region's min box
        and interior point, keep the candidate with the highest IoU to that
        region, split the union of kept masks into connected instances and
        drop those under ``min_area``. Pixels claimed by several classes go
        to the class with the highest heatmap value there. No instance
        covers a nodata pixel of a file (see :meth:`prompt`). Each instance
        gets its quality signals; ``spreads`` (``{class: H x W}``, see
        :class:`~.grounding.Grounded`) give ``draw_agreement``, None when
        the run stored none.
        """
        rgb, valid = read_rgb(image)
        gammas = self.thresholds_for(list(heatmaps), thresholds)
        binaries = binary_maps(rgb, heatmaps, gammas, self.config)
        return self.prompt(rgb, heatmaps, binaries, valid, spreads)

    @torch.inference_mode()
    def prompt(
        self,
        rgb: np.ndarray,
        heatmaps: Mapping[str, np.ndarray],
        binaries: Mapping[str, np.ndarray],
        valid: np.ndarray | None = None,
        spreads: Mapping[str, np.ndarray] | None = None,
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
        found_masks: list[Found] = []
        for label, binary in binaries.items():
            found = regions(binary, self.config.min_area)
            if not found:
                continue
            with self.precision():
                if not image_set:
                    self.set_image(rgb)
                    image_set = True
                chosen = self.predict(found)
            union = chosen.masks.any(0) if valid is None else chosen.masks.any(0) & valid
            for mask in components(union, self.config.min_area):
                parts = [i for i in range(len(found)) if (chosen.masks[i] & mask).any()]
                best = max(parts, key=lambda i: chosen.sam_iou[i])
                found_masks.append((label, mask, chosen, best))
        return self._resolve(found_masks, heatmaps, spreads)

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

    def predict(self, found: list[Region]) -> Candidates:
        """One batched SAM call for all regions of a class: the candidate
        per region with the highest IoU to the region, its predicted IoU,
        that IoU to the region and its stability score (from the logits SAM
        returns, thresholded as ``predict_torch`` would)."""
        size = self.predictor.original_size
        transform = self.predictor.transform
        boxes = torch.tensor([r.box for r in found], dtype=torch.float, device=self.device)
        points = torch.tensor([[r.point] for r in found], dtype=torch.float, device=self.device)
        labels = torch.ones(points.shape[:2], dtype=torch.int, device=self.device)
        logits, iou_predictions, _ = self.predictor.predict_torch(
            point_coords=transform.apply_coords_torch(points, size),
            point_labels=labels,
            boxes=transform.apply_boxes_torch(boxes, size),
            multimask_output=self.config.multimask,
            return_logits=True,
        )
        threshold = self.predictor.model.mask_threshold
        masks = logits > threshold
        targets = torch.from_numpy(np.stack([r.mask for r in found])).to(self.device)
        best, region_iou = select_candidates(masks, targets)
        rows = torch.arange(len(found), device=self.device)

        def numpy(values: torch.Tensor) -> np.ndarray:
            return values.float().cpu().numpy()

        return Candidates(
            masks[rows, best].cpu().numpy(),
            numpy(iou_predictions[rows, best].clamp(0, 1)),
            numpy(region_iou),
            numpy(stability_scores(logits[rows, best], threshold)),
        )

    def _resolve(
        self,
        found: list[Found],
        heatmaps: Mapping[str, np.ndarray],
        spreads: Mapping[str, np.ndarray] | None,
    ) -> list[Instance]:
        """Gives each pixel claimed by several classes to the class with the
        highest heatmap value there, then scores the instances and measures
        their signals on their final masks."""
        labels = sorted({label for label, *_ in found})
        if len(labels) > 1:
            stack = np.stack([heatmaps[name] for name in labels])
            claimed = np.zeros_like(stack, dtype=bool)
            for label, mask, *_ in found:
                claimed[labels.index(label)] |= mask
            owner = np.where(claimed, stack, -1.0).argmax(0)
            found = [(lb, m & (owner == labels.index(lb)), *rest) for lb, m, *rest in found]
        kept = []
        for label, mask, chosen, best in found:
            if mask.sum() < self.config.min_area:
                continue
            heatmap = heatmaps[label]
            signals = Signals(
                float(chosen.sam_iou[best]),
                float(chosen.region_iou[best]),
                float(chosen.stability[best]),
                heat_contrast(heatmap, mask),
                None if spreads is None else draw_agreement(heatmap, spreads[label], mask),
            )
            score = float(heatmap[mask].mean() * chosen.sam_iou[best])
            kept.append(Instance.from_full_mask(label, mask, score, signals))
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


def select_candidates(
    candidates: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate with the highest IoU to each target, and that IoU.

    Args:
        candidates: (R, C, H, W) bool SAM masks.
        targets: (R, H, W) bool binarised regions.

    Returns:
        (R,) long indices into C and (R,) float IoUs.
    """
    targets = targets[:, None]
    inter = (candidates & targets).flatten(2).sum(-1).float()
    union = (candidates | targets).flatten(2).sum(-1).float()
    ious, best = (inter / union.clamp_min(1)).max(1)
    return best, ious
