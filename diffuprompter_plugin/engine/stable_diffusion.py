"""Loading Stable Diffusion, or its tokenizer alone, from a Hugging Face hub
id, a local diffusers folder or an already-built pipeline."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .attention import CapturedUNet
from .config import DEFAULT_SD_MODEL
from .errors import ModelUnavailableError
from .weights import SD_PARTS, is_local


@dataclass
class StableDiffusion:
    """The Stable Diffusion parts DiffuPrompter uses (no safety checker).

    Attributes:
        captured_unet: the U-Net's cross-attention capture and compiled
            form (:class:`~.attention.CapturedUNet`), made once and shared
            by every grounder of these parts.
    """

    vae: Any
    unet: Any
    tokenizer: Any
    text_encoder: Any
    scheduler: Any
    name: str
    captured_unet: CapturedUNet = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.captured_unet = CapturedUNet(self.unet)


def load_stable_diffusion(
    sd_model: str | os.PathLike | Any,
    device: torch.device,
    dtype: torch.dtype,
) -> StableDiffusion:
    """Loads SD from a hub id, a local diffusers folder or a built pipeline.

    Raises:
        ModelUnavailableError: the weights are missing or cannot be fetched.
    """
    if not isinstance(sd_model, (str, os.PathLike)):
        parts = {k: getattr(sd_model, k, None) for k in SD_PARTS}
        missing = [k for k, v in parts.items() if v is None]
        if missing:
            raise TypeError(f"sd_model object lacks {missing}; pass a diffusers pipeline")
        sd = StableDiffusion(**parts, name=type(sd_model).__name__)
    else:
        sd = _load_sd_parts(os.fspath(sd_model), dtype)
    extra = getattr(sd.unet.config, "addition_embed_type", None)
    if extra is not None:
        raise ValueError(
            f"Stable Diffusion '{sd.name}' has a U-Net with added '{extra}' conditioning "
            "(SDXL and its kind), which DiffuPrompter does not drive: use an SD v1.x "
            "or v2.x checkpoint"
        )
    sd.scheduler = _ddpm_scheduler(sd.scheduler)
    for module in (sd.vae, sd.unet, sd.text_encoder):
        module.to(device)
        if module.dtype != dtype:
            module.to(dtype)
        module.eval().requires_grad_(False)
    return sd


def _has_accelerate() -> bool:
    """Whether ``accelerate`` is installed: diffusers then loads weights
    without first initialising the models (``low_cpu_mem_usage``); without
    it, asking for that only prints a warning on every load."""
    return importlib.util.find_spec("accelerate") is not None


def _load_sd_parts(name: str, dtype: torch.dtype) -> StableDiffusion:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    loaders = {
        "vae": AutoencoderKL,
        "unet": UNet2DConditionModel,
        "tokenizer": CLIPTokenizer,
        "text_encoder": CLIPTextModel,
        "scheduler": DDPMScheduler,
    }
    parts = {}
    for part, loader in loaders.items():
        try:
            kwargs = {}
            if part in ("vae", "unet"):  # without accelerate, say what diffusers falls back to
                kwargs = {"torch_dtype": dtype, "low_cpu_mem_usage": _has_accelerate()}
            parts[part] = loader.from_pretrained(name, subfolder=part, **kwargs)
        except (OSError, ValueError) as e:
            raise ModelUnavailableError(
                f"Cannot load the Stable Diffusion '{part}' from '{name}': {e}\n"
                "Download a diffusers-format SD v1.x checkpoint with internet access, "
                f"e.g. `hf download {DEFAULT_SD_MODEL} --local-dir PATH`, then pass "
                "sd_model=PATH (a folder holding vae/, unet/, tokenizer/, "
                "text_encoder/ and scheduler/)."
            ) from e
    return StableDiffusion(**parts, name=name)


def _ddpm_scheduler(scheduler: Any) -> Any:
    """A DDPM scheduler with the model's noise schedule: its ``add_noise``
    indexes the raw training timestep, whatever sampler the model ships."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config)


def load_tokenizer(sd_model: str | os.PathLike) -> Any | None:
    """The CLIP tokenizer of ``sd_model`` alone (a few small files, no
    weights), from its diffusers folder or the Hugging Face cache, never
    from the network; None when its files are not on this machine."""
    name = os.fspath(sd_model)
    if is_local(name):
        folder = Path(name) / "tokenizer"
    else:
        import huggingface_hub

        config = huggingface_hub.try_to_load_from_cache(name, "tokenizer/tokenizer_config.json")
        if not isinstance(config, str):
            return None
        folder = Path(config).parent
    vocabularies = (["tokenizer.json"], ["vocab.json", "merges.txt"])  # fast, or slow format
    has_vocabulary = any(all((folder / f).is_file() for f in v) for v in vocabularies)
    if not (folder / "tokenizer_config.json").is_file() or not has_vocabulary:
        return None  # CLIPTokenizer would make an empty one without complaint
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder)
