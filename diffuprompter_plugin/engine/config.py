"""The one configuration object of the DiffuPrompter method.

Every default of the method lives here, with the paper's value where the
paper gives one (Li et al., Remote Sens. 2024, 16, 2004). This module imports
nothing heavy, so the FiftyOne layer and the App can read it cheaply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

DEFAULT_SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
"""SD v1.5: the 64/32/16/8 cross-attention pyramid at 512 px that the paper
describes, 768-d CLIP text, no v-prediction (community mirror of the original
runwayml release)."""
DEFAULT_SAM_MODEL = "vit_h"
DEFAULT_PRED_FIELD = "dp_instances"
DEFAULT_HEATMAP_FIELD = "dp_heatmap"

NORMALIZATIONS = ("minmax", "none")
RUNTIME_SETTINGS = ("loop_batch_size", "crf_workers")
"""Settings that change speed and memory, never results."""


@dataclass(frozen=True)
class DiffuPrompterConfig:
    """Settings of grounding (Eqs. 3, 4, 9), binarisation (Eq. 10) and SAM.

    Attributes:
        template: text prompt, ``{}`` is replaced by the class name.
        timestep: raw diffusion training-timestep index (0 to 999) at which the
            latent is noised; the paper's "t = 40" read as the index passed to
            the scheduler's ``add_noise``.
        loops: number L of noise draws averaged by LSAD (Eq. 9).
        loop_batch_size: noise draws run together in one U-Net call.
        threshold: binarisation threshold gamma of Eq. 10.
        normalization: the ``Norm`` of Eq. 4, ``"minmax"`` or ``"none"``.
        resolution: longest side, in pixels, at which Stable Diffusion sees
            the image (rounded to a multiple of 64 per side).
        crf: refine the binarised map with DenseCRF (Eq. 10).
        crf_iterations: mean-field iterations of DenseCRF.
        crf_gaussian_sxy, crf_gaussian_compat: smoothness kernel.
        crf_bilateral_sxy, crf_bilateral_srgb, crf_bilateral_compat:
            appearance kernel (pixels, RGB levels, weight).
        crf_workers: DenseCRF processes in :meth:`DiffuPrompter.annotate_all`,
            overlapping the CPU-bound CRF of one image with the GPU work on the
            next ones; 0 runs the CRF inline.
        multimask: ask SAM for its three candidates (section 2.2.3).
        min_area: instances (and prompt regions) smaller than this many pixels
            are dropped.
        seed: seed of the noise draws; the same seed gives the same output.
    """

    template: str = "Photo of a {}"
    timestep: int = 40
    loops: int = 50
    loop_batch_size: int = 25
    threshold: float = 0.4
    normalization: str = "minmax"
    resolution: int = 512
    crf: bool = True
    crf_iterations: int = 5
    crf_gaussian_sxy: float = 3.0
    crf_gaussian_compat: float = 3.0
    crf_bilateral_sxy: float = 80.0
    crf_bilateral_srgb: float = 13.0
    crf_bilateral_compat: float = 10.0
    crf_workers: int = 0
    multimask: bool = True
    min_area: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("template", self.template.count("{}") == 1, "must contain '{}' once"),
            ("timestep", 0 <= self.timestep <= 999, "must be in [0, 999]"),
            ("loops", self.loops >= 1, "must be >= 1"),
            ("loop_batch_size", self.loop_batch_size >= 1, "must be >= 1"),
            ("threshold", 0.0 < self.threshold < 1.0, "must be in (0, 1)"),
            (
                "normalization",
                self.normalization in NORMALIZATIONS,
                f"must be one of {NORMALIZATIONS}",
            ),
            ("resolution", self.resolution >= 64, "must be >= 64"),
            ("crf_iterations", self.crf_iterations >= 1, "must be >= 1"),
            ("crf_workers", self.crf_workers >= 0, "must be >= 0"),
            ("min_area", self.min_area >= 1, "must be >= 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"DiffuPrompterConfig.{name}={getattr(self, name)!r} {rule}")

    def replace(self, **changes: Any) -> DiffuPrompterConfig:
        """Returns a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Returns the settings as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffuPrompterConfig:
        """Builds a config from :meth:`to_dict` output; unknown keys are errors."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Unknown DiffuPrompterConfig settings: {unknown}")
        return cls(**d)
