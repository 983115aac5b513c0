"""The DiffuPrompter annotator: heatmaps from Stable Diffusion, instances from SAM."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import DiffuPrompterConfig
from .grounding import TextGrounder
from .image import ImageLike, to_rgb_uint8
from .models import (
    DEFAULT_SAM_MODEL,
    DEFAULT_SD_MODEL,
    default_dtype,
    load_sam,
    load_stable_diffusion,
    resolve_device,
)
from .segmentation import Instance, SamPrompter, Thresholds


@dataclass
class Annotation:
    """What :meth:`DiffuPrompter.annotate` returns for one image.

    Attributes:
        heatmaps: ``{class name: H x W float32 in [0, 1]}``.
        instances: every instance found, of all classes.
    """

    heatmaps: dict[str, np.ndarray]
    instances: list[Instance] = field(default_factory=list)


class DiffuPrompter:
    """Training-free instance annotation of remote-sensing images.

    Args:
        grounder: the Stable Diffusion heatmap stage.
        prompter: the SAM stage.
        config: method settings shared by both stages.
    """

    def __init__(
        self, grounder: TextGrounder, prompter: SamPrompter, config: DiffuPrompterConfig
    ) -> None:
        self.grounder = grounder
        self.prompter = prompter
        self.config = config

    @classmethod
    def from_pretrained(
        cls,
        sd_model: str | os.PathLike | Any = DEFAULT_SD_MODEL,
        sam_model: str | os.PathLike | Any = DEFAULT_SAM_MODEL,
        sam_checkpoint: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        config: DiffuPrompterConfig | None = None,
        dtype: torch.dtype | None = None,
    ) -> DiffuPrompter:
        """Loads both models.

        Args:
            sd_model: hub id, local diffusers folder, or a built pipeline.
            sam_model: ``vit_h``/``vit_l``/``vit_b``, a custom SAM folder, or a
                built ``segment_anything`` Sam.
            sam_checkpoint: checkpoint file for a registry type; None downloads
                Meta's checkpoint into the cache (SHA-256 checked).
            device: default CUDA when available, else CPU.
            config: method settings (default: the paper's).
            dtype: default float16 on GPU, float32 on CPU.

        Raises:
            ModelUnavailableError: weights are missing or cannot be fetched.
        """
        config = config or DiffuPrompterConfig()
        device = resolve_device(device)
        dtype = dtype or default_dtype(device)
        sd = load_stable_diffusion(sd_model, device, dtype)
        sam = load_sam(sam_model, sam_checkpoint, device)
        grounder = TextGrounder(sd, config, device, dtype)
        return cls(grounder, SamPrompter(sam, config, device), config)

    def heatmap(self, image: ImageLike, class_name: str) -> np.ndarray:
        """The LSAD heatmap of one class: H x W float32 in [0, 1]."""
        return self.grounder.heatmaps(image, [class_name])[class_name]

    def annotate(
        self,
        image: ImageLike,
        class_names: Sequence[str],
        thresholds: Thresholds = None,
    ) -> Annotation:
        """Heatmaps and instances of ``class_names`` in ``image``.

        Args:
            image: array, PIL image or file path.
            class_names: one or more class names.
            thresholds: gamma for all classes, per class, or None for the
                config's.

        Raises:
            ValueError: empty or duplicate class names.
            InputImageError: the image cannot be used.
        """
        names = validate_class_names(class_names)
        rgb = to_rgb_uint8(image)
        heatmaps = self.grounder.heatmaps(rgb, names)
        return Annotation(heatmaps, self.prompter.segment(rgb, heatmaps, thresholds))


def validate_class_names(class_names: Sequence[str]) -> list[str]:
    """Checks that class names are a non-empty list of distinct non-blank strings."""
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a list of names, not the string {class_names!r}")
    names = list(class_names)
    if not names:
        raise ValueError("class_names is empty: give at least one class name")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"Invalid class names {bad!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"Duplicate class names in {names!r}")
    return names
