"""Eqs. 4 and 9, batching, seeding and input handling of the heatmap stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffuprompter_plugin.engine.grounding import (
    TextGrounder,
    aggregate_pyramid,
    normalize,
    working_size,
)


def _grounder(prompter, **changes) -> TextGrounder:
    g = prompter.grounder
    return TextGrounder(g.sd, g.config.replace(**changes), g.device, g.dtype)


def test_eq4_divides_each_resolution_by_its_max_then_averages():
    fine = torch.tensor([[[1.0, 2.0, 0.0, 0.0]] * 4])  # (1, 4, 4), max 2
    coarse = torch.tensor([[[0.0, 4.0], [4.0, 8.0]]])  # (1, 2, 2), max 8
    # bilinear 2 -> 4 (align_corners=False) samples at -0.25, 0.25, 0.75, 1.25
    w = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    coarse_up = w @ coarse[0].numpy() @ w.T
    mean = (fine[0].numpy() / 2 + coarse_up / coarse_up.max()) / 2
    expected = (mean - mean.min()) / (mean.max() - mean.min())
    got = aggregate_pyramid([fine, coarse], (4, 4), "minmax")
    np.testing.assert_allclose(got[0].numpy(), expected, atol=1e-6)
    raw = aggregate_pyramid([fine, coarse], (4, 4), "none")
    np.testing.assert_allclose(raw[0].numpy(), mean, atol=1e-6)


def test_eq9_heatmap_is_the_normalised_mean_of_loop_maps(tiny_diffuprompter, rgb):
    g = _grounder(tiny_diffuprompter, loops=5, loop_batch_size=1)
    latent = g.encode(rgb)
    with torch.no_grad():
        calls = list(g.loop_maps(latent, ["ship"]))
        loops = torch.cat([call.maps for call in calls])
        heat = g.latent_heatmaps(latent, ["ship"])[0][0]
    assert [call.classes.tolist() for call in calls] == [[0]] * 5
    assert loops.shape == (5, 8, 8)
    assert torch.allclose(loops.amax(dim=(1, 2)), torch.ones(5))
    torch.testing.assert_close(heat, normalize(loops.mean(0), "minmax"))


def test_batched_loops_equal_one_at_a_time(tiny_diffuprompter, rgb):
    batched = _grounder(tiny_diffuprompter, loops=6, loop_batch_size=6).heatmaps(rgb, ["bridge"])
    single = _grounder(tiny_diffuprompter, loops=6, loop_batch_size=1).heatmaps(rgb, ["bridge"])
    np.testing.assert_allclose(batched["bridge"], single["bridge"], atol=1e-5)


def test_same_seed_same_output_other_seed_differs(tiny_diffuprompter, rgb):
    a = _grounder(tiny_diffuprompter, seed=3).heatmaps(rgb, ["harbor"])["harbor"]
    b = _grounder(tiny_diffuprompter, seed=3).heatmaps(rgb, ["harbor"])["harbor"]
    c = _grounder(tiny_diffuprompter, seed=4).heatmaps(rgb, ["harbor"])["harbor"]
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_more_loops_lower_variance_across_seeds(tiny_diffuprompter, rgb):
    def spread(loops: int) -> float:
        maps = []
        for seed in range(6):
            g = _grounder(
                tiny_diffuprompter,
                loops=loops,
                loop_batch_size=loops,
                seed=seed,
                normalization="none",
            )
            latent = g.encode(rgb)
            with torch.no_grad():
                (call,) = g.loop_maps(latent, ["vehicle"])
                maps.append(call.maps.mean(0))
        return torch.stack(maps).std(0).mean().item()

    one, sixteen = spread(1), spread(16)
    assert sixteen < one / 2  # Eq. 8: std falls as 1 / sqrt(L) (here 1/4)


@pytest.mark.parametrize(
    "image",
    [
        np.full((40, 70), 128, np.uint8),
        np.full((70, 40, 4), 200, np.uint8),
        (np.arange(50 * 60 * 3) % 4096).astype(np.uint16).reshape(50, 60, 3),
        np.random.default_rng(1).random((33, 33, 1)).astype(np.float32),
    ],
    ids=["gray", "rgba-tall", "uint16", "float-1ch"],
)
def test_heatmap_matches_input_size_and_range(tiny_diffuprompter, image):
    heat = tiny_diffuprompter.heatmap(image, "tennis court")
    assert heat.shape == image.shape[:2]
    assert heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1


def test_working_size_keeps_aspect_in_multiples_of_64():
    assert working_size(512, 512, 512) == (512, 512)
    assert working_size(600, 800, 512) == (384, 512)
    assert working_size(1000, 100, 512) == (512, 64)
    assert working_size(48, 64, 64) == (64, 64)


def _count_calls(module: torch.nn.Module, calls: list[int]):
    return module.register_forward_hook(lambda m, args, out: calls.append(len(args)))


def test_classes_share_unet_calls_and_image_work(tiny_diffuprompter, rgb):
    names = ["ship", "harbor", "storage tank"]
    g = _grounder(tiny_diffuprompter, loops=2, loop_batch_size=6)
    unet, text, vae = [], [], []
    handles = [
        _count_calls(g.sd.unet, unet),
        _count_calls(g.sd.text_encoder, text),
        _count_calls(g.sd.vae.encoder, vae),
    ]
    try:
        shared = g.heatmaps(rgb, names)
        assert (len(unet), len(text), len(vae)) == (1, 3, 1)  # 3 classes x 2 loops: one call
        g.heatmaps(rgb[::-1].copy(), names)
        assert (len(unet), len(text), len(vae)) == (2, 3, 2)  # prompts embedded once
    finally:
        for handle in handles:
            handle.remove()
    for name in names:
        alone = _grounder(tiny_diffuprompter, loops=2, loop_batch_size=1).heatmaps(rgb, [name])[
            name
        ]
        np.testing.assert_allclose(shared[name], alone, atol=1e-5)


def test_compiled_unet_gives_the_eager_heatmaps(tiny_models, rgb, monkeypatch):
    """The capture traces into one graph (``fullgraph=True`` fails on any graph
    break); dynamo's eager backend keeps the CPU test fast, the GPU runs
    inductor. The compiled U-Net is built once per model."""
    from helpers import TINY_CONFIG

    from diffuprompter_plugin import DiffuPrompter

    compiles = []

    def compile_(module, **kwargs):
        compiles.append(module)
        return real_compile(module, backend="eager", fullgraph=True)

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", compile_)
    config = TINY_CONFIG.replace(loops=2, loop_batch_size=2)
    model = DiffuPrompter.from_pretrained(*tiny_models, device="cpu", config=config)
    eager = model.grounder.heatmaps(rgb, ["ship", "harbor"])
    model.config = config.replace(compile_unet="on")
    compiled = model.grounder.heatmaps(rgb, ["ship", "harbor"])
    again = model.grounder.heatmaps(rgb, ["ship", "harbor"])
    assert compiles == [model.grounder.sd.unet]
    assert model.grounder.sd.captured_unet.compiled is not None
    for name in eager:
        np.testing.assert_allclose(compiled[name], eager[name], atol=1e-5)
        np.testing.assert_array_equal(again[name], compiled[name])
