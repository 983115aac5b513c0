"""The public surface: DiffuPrompter.from_pretrained, heatmap and annotate."""

from __future__ import annotations

import numpy as np
import pytest

from diffuprompter_plugin import DiffuPrompterConfig


def test_annotate_returns_heatmaps_and_consistent_instances(tiny_diffuprompter, rgb):
    result = tiny_diffuprompter.annotate(rgb, ["storage tank", "airplane"], thresholds=0.3)
    assert set(result.heatmaps) == {"storage tank", "airplane"}
    for heat in result.heatmaps.values():
        assert heat.shape == (48, 64) and heat.dtype == np.float32
    assert result.instances
    for inst in result.instances:
        assert inst.label in result.heatmaps
        x0, y0, x1, y1 = inst.box
        assert inst.mask.shape == (y1 - y0, x1 - x0)
    masks = np.stack([i.full_mask((48, 64)) for i in result.instances]).sum(0)
    assert masks.max() == 1  # no pixel belongs to two instances


def test_annotate_is_deterministic(tiny_diffuprompter, rgb):
    a = tiny_diffuprompter.annotate(rgb, ["ship"], thresholds=0.3)
    b = tiny_diffuprompter.annotate(rgb, ["ship"], thresholds=0.3)
    np.testing.assert_array_equal(a.heatmaps["ship"], b.heatmaps["ship"])
    assert [(i.box, i.score) for i in a.instances] == [(i.box, i.score) for i in b.instances]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ([], "class_names is empty"),
        ("ship", "not the string"),
        (["ship", "ship"], "Duplicate"),
        (["ship", " "], "Invalid class names"),
    ],
)
def test_bad_class_lists_get_clear_errors(tiny_diffuprompter, rgb, names, message):
    with pytest.raises(ValueError, match=message):
        tiny_diffuprompter.annotate(rgb, names)


def test_config_validates_and_round_trips():
    config = DiffuPrompterConfig(loops=8, threshold=0.3)
    assert DiffuPrompterConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="threshold=1.5"):
        DiffuPrompterConfig(threshold=1.5)
    with pytest.raises(ValueError, match="timestep=1000"):
        DiffuPrompterConfig(timestep=1000)
    with pytest.raises(ValueError, match="Unknown DiffuPrompterConfig settings"):
        DiffuPrompterConfig.from_dict({"loopz": 3})


def test_config_assignment_reaches_both_stages(tiny_diffuprompter, rgb):
    own = tiny_diffuprompter.config
    assert tiny_diffuprompter.annotate(rgb, ["ship"]).instances
    try:
        tiny_diffuprompter.config = own.replace(min_area=48 * 64 + 1)  # larger than the image
        assert (
            tiny_diffuprompter.grounder.config
            is tiny_diffuprompter.sam_prompter.config
            is tiny_diffuprompter.config
        )
        assert tiny_diffuprompter.annotate(rgb, ["ship"]).instances == []
    finally:
        tiny_diffuprompter.config = own


def test_package_exports_resolve_lazily():
    import subprocess
    import sys

    code = (
        "import sys, diffuprompter_plugin as dp\n"
        "assert 'torch' not in sys.modules\n"
        "from diffuprompter_plugin.brain import PseudoLabelsConfig\n"
        "assert 'torch' not in sys.modules, 'brain classes must load without torch'\n"
        "print(dp.DiffuPrompter.__name__, dp.compute_pseudo_labels.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["DiffuPrompter", "diffuprompter_plugin.labelling"]


def test_annotate_all_overlaps_crf_and_matches_annotate(tiny_diffuprompter, rgb, tmp_path):
    from diffuprompter_plugin import DiffuPrompter, SamPrompter, TextGrounder

    config = tiny_diffuprompter.config.replace(crf=True, crf_workers=2, threshold=0.3)
    g = tiny_diffuprompter.grounder
    sam = SamPrompter(tiny_diffuprompter.sam_prompter.predictor.model, config, g.device)
    model = DiffuPrompter(TextGrounder(g.sd, config, g.device, g.dtype), sam, config)
    images = [rgb, rgb[::-1].copy(), tmp_path / "missing.png", rgb[:, ::-1].copy()]
    items = [(i, image, ["ship", "harbor"]) for i, image in enumerate(images)]
    results = list(model.annotate_all(items))
    assert [key for key, _ in results] == [0, 1, 2, 3]
    assert "missing.png" in str(results[2][1])
    for key in (0, 1, 3):
        expected = model.annotate(images[key], ["ship", "harbor"])
        got = results[key][1]
        assert [(i.label, i.box) for i in got.instances] == [
            (i.label, i.box) for i in expected.instances
        ]
        np.testing.assert_array_equal(got.heatmaps["ship"], expected.heatmaps["ship"])


def test_half_precision_follows_float32(tiny_diffuprompter, tiny_models, rgb):
    """The GPU path (fp16 SD weights, SAM under fp16 autocast), run on the CPU."""
    import torch

    from diffuprompter_plugin import DiffuPrompter

    half = DiffuPrompter.from_pretrained(
        *tiny_models, device="cpu", config=tiny_diffuprompter.config, dtype=torch.float16
    )
    assert half.grounder.sd.unet.dtype == torch.float16
    sam = half.sam_prompter.predictor.model
    assert next(sam.parameters()).dtype == torch.float32  # autocast, not cast weights
    computed = []
    sam.image_encoder.blocks[0].mlp.register_forward_hook(lambda m, i, out: computed.append(out))

    got = half.annotate(rgb, ["ship"], thresholds=0.3)
    expected = tiny_diffuprompter.annotate(rgb, ["ship"], thresholds=0.3)
    assert [t.dtype for t in computed] == [torch.float16]
    assert got.heatmaps["ship"].dtype == np.float32
    np.testing.assert_allclose(got.heatmaps["ship"], expected.heatmaps["ship"], atol=5e-3)
    assert [i.box for i in got.instances] == [i.box for i in expected.instances]
