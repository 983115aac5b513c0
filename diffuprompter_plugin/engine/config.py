"""The one configuration object of the DiffuPrompter method.

Every setting is declared once, here, with its default (the paper's value
where the paper gives one: Li et al., Remote Sens. 2024, 16, 2004), its valid
range, the label and description the App forms show, and whether it is a
runtime setting (speed and memory only, never results). Validation, the
operator forms, resume rules and threshold files all read these declarations.
This module imports nothing heavy, so the FiftyOne layer and the App can read
it cheaply.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

DEFAULT_SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
"""SD v1.5: the 64/32/16/8 cross-attention pyramid at 512 px that the paper
describes, 768-d CLIP text, no v-prediction (community mirror of the original
runwayml release)."""
DEFAULT_SAM_MODEL = "vit_h"

NORMALIZATIONS = ("minmax", "none")
COMPILE_CHOICES = ("auto", "on", "off")


def model_source(model: Any) -> str | None:
    """What a run records of a model argument: its hub id, registry type or
    path as a string; None for no model, or for a model object (its weights
    are not on record)."""
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else None


@dataclass(frozen=True)
class Setting:
    """What is known of one setting besides its default.

    Attributes:
        kind: the value's type (``int``, ``float``, ``bool`` or ``str``).
        label: short name shown in the App forms.
        description: one line shown under the label.
        low, high: bounds of a number (None: unbounded on that side).
        open: the bounds themselves are excluded.
        choices: the allowed values of a string setting.
        runtime: changes speed and memory only, never results, so a run may
            resume with another value.
    """

    kind: type
    label: str
    description: str = ""
    low: float | None = None
    high: float | None = None
    open: bool = False
    choices: tuple[str, ...] = ()
    runtime: bool = False

    def rule(self) -> str:
        """The valid values in words, e.g. ``in (0, 1)`` or ``>= 1``."""
        if self.choices:
            return f"one of {self.choices}"
        if self.low is not None and self.high is not None:
            left, right = "()" if self.open else "[]"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{'>' if self.open else '>='} {self.low:g}"
        return ""

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is within this setting's range or choices."""
        if self.choices:
            return value in self.choices
        if self.low is None and self.high is None:
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        above = value > self.low if self.open else value >= self.low
        below = self.high is None or (value < self.high if self.open else value <= self.high)
        return (self.low is None or above) and below


def _setting(default: Any, label: str, description: str = "", **spec: Any) -> Any:
    """A dataclass field whose metadata holds its :class:`Setting`."""
    setting = Setting(type(default), label, description, **spec)
    return dataclasses.field(default=default, metadata={"setting": setting})


@dataclass(frozen=True)
class DiffuPrompterConfig:
    """Settings of grounding (Eqs. 3, 4, 9), binarisation (Eq. 10) and SAM.

    Attributes:
        template: text prompt, ``{}`` is replaced by the class name.
        timestep: raw diffusion training-timestep index (0 to 999) at which the
            latent is noised; the paper's "t = 40" read as the index passed to
            the scheduler's ``add_noise``.
        loops: number L of noise draws averaged by LSAD (Eq. 9).
        loop_batch_size: (class, noise draw) pairs run together in one U-Net
            call; an image's classes, and a scene's tiles, share calls when
            they fit.
        compile_unet: ``torch.compile`` the U-Net: ``"auto"`` (on CUDA only),
            ``"on"`` or ``"off"``. The warm-up is paid once per process.
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
            overlapping the CPU-bound CRF of one image or scene tile with the
            GPU work on the next ones; 0 runs the CRF inline (same results).
        multimask: ask SAM for its three candidates (section 2.2.3).
        min_area: instances (and prompt regions) smaller than this many pixels
            are dropped.
        seed: seed of the noise draws; the same seed gives the same output.
        tile_size: images with a side longer than this many native pixels
            are labelled as overlapping square tiles of this side, each seen
            by SD at ``resolution`` as the paper's 512-px patches are (see
            :mod:`~diffuprompter_plugin.engine.scenes`); smaller images are
            labelled whole.
        tile_overlap: native pixels shared by neighbouring tiles; objects up
            to this size are seen whole by at least one tile. With 0, tiles
            share no window to match their instances in, so an object on a
            seam comes out as one instance per tile.
    """

    template: str = _setting("Photo of a {}", "Prompt template", "'{}' is the class name")
    timestep: int = _setting(
        40, "Timestep t", "Raw diffusion timestep index (paper: 40)", low=0, high=999
    )
    loops: int = _setting(50, "Loops L", "Noise draws averaged by LSAD (paper: 50)", low=1)
    loop_batch_size: int = _setting(
        25, "Loop batch size", "Draws per U-Net call", low=1, runtime=True
    )
    compile_unet: str = _setting(
        "auto",
        "Compiled U-Net",
        "torch.compile the U-Net (auto: on CUDA only)",
        choices=COMPILE_CHOICES,
        runtime=True,
    )
    threshold: float = _setting(
        0.4,
        "Threshold γ",
        "Binarisation threshold (paper: 0.4)",
        low=0,
        high=1,
        open=True,
    )
    normalization: str = _setting("minmax", "Norm of Eq. 4", choices=NORMALIZATIONS)
    resolution: int = _setting(512, "Resolution", "Longest side SD sees, in pixels", low=64)
    crf: bool = _setting(True, "DenseCRF refinement", "Eq. 10")
    crf_iterations: int = _setting(5, "CRF iterations", low=1)
    crf_gaussian_sxy: float = _setting(3.0, "CRF smoothness sxy", low=0, open=True)
    crf_gaussian_compat: float = _setting(3.0, "CRF smoothness weight", low=0)
    crf_bilateral_sxy: float = _setting(80.0, "CRF appearance sxy", low=0, open=True)
    crf_bilateral_srgb: float = _setting(13.0, "CRF appearance srgb", low=0, open=True)
    crf_bilateral_compat: float = _setting(10.0, "CRF appearance weight", low=0)
    crf_workers: int = _setting(
        0,
        "CRF workers",
        "Processes running DenseCRF beside the GPU",
        low=0,
        runtime=True,
    )
    multimask: bool = _setting(True, "SAM multimask", "Three candidates per prompt")
    min_area: int = _setting(16, "Minimum area", "Pixels; smaller instances are dropped", low=1)
    seed: int = _setting(0, "Seed", "Seed of the noise draws")
    tile_size: int = _setting(
        1024,
        "Tile size",
        "Larger images are labelled in tiles of this side (px)",
        low=64,
    )
    tile_overlap: int = _setting(128, "Tile overlap", "Pixels shared by neighbouring tiles", low=0)

    def __post_init__(self) -> None:
        if self.template.count("{}") != 1:
            raise ValueError(
                f"DiffuPrompterConfig.template={self.template!r} must contain '{{}}' once"
            )
        for name in SETTINGS:
            check_setting(name, getattr(self, name))
        if 2 * self.tile_overlap >= self.tile_size:
            raise ValueError(
                f"DiffuPrompterConfig.tile_overlap={self.tile_overlap} must be less than "
                f"half of tile_size={self.tile_size}"
            )

    def replace(self, **changes: Any) -> DiffuPrompterConfig:
        """Returns a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Returns the settings as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffuPrompterConfig:
        """Builds a config from :meth:`to_dict` output; unknown keys are errors."""
        unknown = sorted(set(d) - set(SETTINGS))
        if unknown:
            raise ValueError(f"Unknown DiffuPrompterConfig settings: {unknown}")
        return cls(**d)


SETTINGS: dict[str, Setting] = {
    f.name: f.metadata["setting"] for f in dataclasses.fields(DiffuPrompterConfig)
}
"""Every setting's :class:`Setting`, in declaration order."""

RUNTIME_SETTINGS = tuple(name for name, spec in SETTINGS.items() if spec.runtime)
"""Settings that change speed and memory, never results."""


def check_setting(name: str, value: Any, what: str | None = None) -> None:
    """Raises ValueError when ``value`` is not of setting ``name``'s type or
    out of its range; the message names ``what`` (default
    ``DiffuPrompterConfig.<name>``), the value and the rule."""
    spec = SETTINGS[name]
    what = what or f"DiffuPrompterConfig.{name}"
    numeric = spec.kind in (int, float) and not isinstance(value, bool)
    typed = isinstance(value, (int, float) if spec.kind is float else spec.kind)
    if not typed or (spec.kind in (int, float) and not numeric):
        raise ValueError(f"{what}={value!r} must be of type {spec.kind.__name__}")
    if not spec.accepts(value):
        raise ValueError(f"{what}={value!r} must be {spec.rule()}")


DEFAULTS = DiffuPrompterConfig()
"""The paper's settings."""
