"""Shared fixtures: tiny random-weight models written once per test session."""

from __future__ import annotations

import os
import tempfile

from fiftyone_home import use_throwaway_home

use_throwaway_home(  # before anything imports fiftyone
    "diffuprompter-tests-",
    FIFTYONE_PLUGINS_DIR=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    FIFTYONE_SHOW_PROGRESS_BARS="false",
)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import TINY_CONFIG  # noqa: E402

from diffuprompter_plugin.engine.tiny import write_tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[str, str]:
    """(sd folder, sam folder) of tiny random-weight models on disk."""
    sd, sam = write_tiny_models(tmp_path_factory.mktemp("models"))
    return str(sd), str(sam)


@pytest.fixture(scope="session")
def tiny_diffuprompter(tiny_models):
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


@pytest.fixture(autouse=True)
def _temporary_files(tmp_path_factory, monkeypatch):
    """Temporary files (a scene's heatmap folder, which a test that keeps
    nothing of its Annotation leaves behind) go under pytest's folder,
    which it prunes, not the system's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tmp")))


@pytest.fixture
def image_dataset(tmp_path):
    """A persistent dataset of four 40 x 56 images with ground-truth classes."""
    import fiftyone as fo
    from PIL import Image

    dataset = fo.Dataset(persistent=True)
    rng = np.random.default_rng(0)
    labels = ["ship", "storage tank", "ship", "harbor"]
    samples = []
    for i, label in enumerate(labels):
        path = tmp_path / f"scene_{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
        samples.append(fo.Sample(filepath=str(path), ground_truth=fo.Classification(label=label)))
    dataset.add_samples(samples)
    yield dataset
    dataset.delete()


@pytest.fixture
def dataset_name():
    """A fresh dataset name, deleted after the test."""
    import fiftyone as fo

    name = f"test-{os.urandom(4).hex()}"
    yield name
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
