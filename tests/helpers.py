"""Test helpers importable from every test module (pytest pythonpath)."""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from diffuprompter_plugin.engine.config import DiffuPrompterConfig
from diffuprompter_plugin.engine.pipeline import Annotator
from diffuprompter_plugin.engine.segmentation import SamPrompter

TINY_CONFIG = DiffuPrompterConfig(loops=4, loop_batch_size=2, resolution=64, crf=False)
"""Settings for the tiny models: 64 px working size, 4 loops, no CRF."""


class StubModel(Annotator):
    """Engine stand-in for FiftyOne-layer tests: reads the image like the
    engine does, returns a ramp heatmap and one 8 x 8 instance per class."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.config = DiffuPrompterConfig()
        self.calls: list[str] = []
        self.crf_workers_seen: set[int] = set()
        self.fail_after = fail_after

    def annotate(self, image, class_names, thresholds=None):
        from diffuprompter_plugin.engine.image import to_rgb_uint8
        from diffuprompter_plugin.engine.pipeline import Annotation
        from diffuprompter_plugin.engine.segmentation import Instance

        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("worker killed")
        self.calls.append(str(image))
        self.crf_workers_seen.add(self.config.crf_workers)
        height, width = to_rgb_uint8(image).shape[:2]
        ramp = np.linspace(0, 1, height * width, dtype=np.float32).reshape(height, width)
        instances = []
        for k, name in enumerate(class_names):
            mask = np.zeros((height, width), bool)
            mask[k * 8 : k * 8 + 8, 0:8] = True
            instances.append(Instance.from_full_mask(name, mask, 0.5))
        return Annotation({n: ramp for n in class_names}, instances)


class EchoPrompter(SamPrompter):
    """SAM replaced by an oracle that returns each region's own mask."""

    def __init__(self, config):
        self.config = config
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.predictor = type("P", (), {"set_image": lambda self, rgb: None})()
        self.predictor.transform = ResizeLongestSide(1024)

    def predict(self, found):
        return np.stack([r.mask for r in found]), [0.8] * len(found)
