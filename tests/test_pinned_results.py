"""Results do not change with the speed work: the same seed gives the heatmaps
and instances that the engine gave before classes shared U-Net calls, the
capture used SDPA and the CRF moved to a pool (numbers recorded then, with the
tiny models of ``tests/conftest.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from diffuprompter_plugin import DiffuPrompter, SamPrompter, TextGrounder

CLASSES = ["storage tank", "ship", "harbor"]

PINNED_HEATMAPS = {  # every 8th pixel of each 48 x 64 heatmap
    "storage tank": [
        [0.35497, 0.53988, 0.60977, 0.29172, 0.10561, 0.20012, 0.1971, 0.0636],
        [0.55215, 0.69049, 0.72483, 0.57209, 0.45638, 0.44413, 0.4789, 0.45424],
        [0.6161, 0.55807, 0.49816, 0.51987, 0.69466, 0.63479, 0.51545, 0.56702],
        [0.70612, 0.68037, 0.62112, 0.62929, 0.68589, 0.55685, 0.50774, 0.5029],
        [0.68441, 0.81574, 0.94509, 0.91766, 0.70826, 0.44322, 0.38742, 0.44704],
        [0.66284, 0.70057, 0.86109, 0.81344, 0.72925, 0.58369, 0.3802, 0.37995],
    ],
    "ship": [
        [0.42449, 0.64339, 0.738, 0.3939, 0.15227, 0.19772, 0.16304, 0.04344],
        [0.6161, 0.75784, 0.81784, 0.65838, 0.49202, 0.42532, 0.43279, 0.40164],
        [0.63256, 0.5878, 0.55122, 0.55207, 0.66938, 0.57451, 0.41755, 0.48243],
        [0.71227, 0.68769, 0.62406, 0.58938, 0.60048, 0.46403, 0.39015, 0.39684],
        [0.66296, 0.78684, 0.92997, 0.86497, 0.63663, 0.36815, 0.2885, 0.35855],
        [0.57318, 0.62704, 0.83057, 0.78973, 0.6881, 0.53004, 0.31071, 0.31595],
    ],
    "harbor": [
        [0.27744, 0.4835, 0.59146, 0.28333, 0.07095, 0.16981, 0.18072, 0.1319],
        [0.515, 0.60767, 0.62198, 0.46697, 0.35029, 0.34706, 0.4211, 0.44626],
        [0.64648, 0.54341, 0.44535, 0.46502, 0.63424, 0.57083, 0.40722, 0.48396],
        [0.75195, 0.68783, 0.58642, 0.54037, 0.5522, 0.40876, 0.33788, 0.36987],
        [0.68276, 0.79834, 0.90866, 0.82956, 0.56627, 0.28613, 0.20284, 0.27497],
        [0.69642, 0.70535, 0.83521, 0.7614, 0.62375, 0.4139, 0.16797, 0.1686],
    ],
}

PINNED_INSTANCES = [
    ("storage tank", (2, 0, 64, 48), 1180),
    ("ship", (0, 0, 40, 28), 413),
    ("harbor", (0, 0, 64, 48), 328),
]
"""(label, box, area) of each instance, in order."""


@pytest.fixture
def pinned_model(tiny_diffuprompter):
    """6 loops in calls of 4 (classes share calls; the last one is short), CRF on."""
    config = tiny_diffuprompter.config.replace(loops=6, loop_batch_size=4, crf=True)
    g = tiny_diffuprompter.grounder
    sam = SamPrompter(tiny_diffuprompter.sam_prompter.predictor.model, config, g.device)
    return DiffuPrompter(TextGrounder(g.sd, config, g.device, g.dtype), sam, config)


def _assert_pinned(result) -> None:
    assert list(result.heatmaps) == CLASSES
    for name, expected in PINNED_HEATMAPS.items():
        got = result.heatmaps[name][::8, ::8]
        np.testing.assert_allclose(got, np.array(expected), atol=1e-4, err_msg=name)
    assert [(i.label, i.box, i.area) for i in result.instances] == PINNED_INSTANCES


def test_annotate_gives_the_pinned_results(pinned_model, rgb):
    _assert_pinned(pinned_model.annotate(rgb, CLASSES, thresholds=0.3))


def test_annotate_all_with_crf_workers_gives_the_pinned_results(pinned_model, rgb):
    pinned_model.config = pinned_model.config.replace(crf_workers=2)
    results = list(pinned_model.annotate_all([(k, rgb, CLASSES) for k in range(3)], 0.3))
    assert [key for key, _ in results] == [0, 1, 2]
    for _, result in results:
        _assert_pinned(result)
