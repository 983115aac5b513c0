"""Where the models run and in which precision, when the caller does not say."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Returns ``device``, or CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """float16 on GPUs, float32 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.float32
