"""Shared fixtures: tiny random-weight models written once per test session."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffuprompter_plugin.config import DiffuPrompterConfig
from diffuprompter_plugin.tiny import write_tiny_models

TINY_CONFIG = DiffuPrompterConfig(loops=4, loop_batch_size=2, resolution=64, crf=False)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[str, str]:
    """(sd folder, sam folder) of tiny random-weight models on disk."""
    sd, sam = write_tiny_models(tmp_path_factory.mktemp("models"))
    return str(sd), str(sam)


@pytest.fixture(scope="session")
def prompter(tiny_models):
    """A tiny DiffuPrompter on the CPU loaded through ``from_pretrained``."""
    from diffuprompter_plugin import DiffuPrompter

    sd, sam = tiny_models
    return DiffuPrompter.from_pretrained(sd, sam, device="cpu", config=TINY_CONFIG)


@pytest.fixture
def rgb() -> np.ndarray:
    """A seeded 48 x 64 RGB test image with a bright square."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, size=(48, 64, 3), dtype=np.uint8)
    image[10:30, 20:44] = 220
    return image


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
