"""Eq. 3: the captured maps are the cross-attention softmax of the class tokens."""

from __future__ import annotations

import math

import pytest
import torch

from diffuprompter_plugin.engine.attention import cross_attention_modules, install_capture
from diffuprompter_plugin.engine.grounding import class_token_indices
from diffuprompter_plugin.engine.stable_diffusion import load_stable_diffusion


def _unet_inputs(model, class_name="storage tank", batch=2):
    grounder = model.grounder
    embeds, indices = grounder.embed_prompt(class_name)
    latent = torch.randn(batch, 4, 8, 8)
    timesteps = torch.full((batch,), 40, dtype=torch.long)
    return latent, timesteps, embeds.expand(batch, -1, -1), indices


def test_captured_attention_equals_explicit_softmax(tiny_diffuprompter):
    unet = tiny_diffuprompter.grounder.sd.unet
    latent, timesteps, embeds, indices = _unet_inputs(tiny_diffuprompter)
    inputs = {}

    def record(name):
        def hook(module, args, kwargs):
            inputs[name] = (
                args[0] if args else kwargs["hidden_states"],
                kwargs["encoder_hidden_states"],
            )

        return hook

    modules = cross_attention_modules(unet)
    handles = [
        m.register_forward_pre_hook(record(n), with_kwargs=True) for n, m in modules.items()
    ]
    try:
        captured, store = tiny_diffuprompter.grounder.sd.captured_unet.module(compiled=False)
        assert captured is unet
        with torch.no_grad():
            store.reset(indices, (8, 8))
            unet(latent, timesteps, encoder_hidden_states=embeds)
    finally:
        tiny_diffuprompter.grounder.sd.captured_unet.store.active = False
        for h in handles:
            h.remove()

    assert set(store.layer_maps) == set(modules)
    for name, module in modules.items():
        hidden, context = inputs[name]
        batch, pixels, _ = hidden.shape
        q = module.to_q(hidden).view(batch, pixels, module.heads, -1).transpose(1, 2)
        k = module.to_k(context).view(batch, context.shape[1], module.heads, -1).transpose(1, 2)
        d = q.shape[-1]
        probs = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(d), dim=-1)
        expected = probs[..., indices].mean(dim=(1, 3))
        got = store.layer_maps[name].reshape(batch, pixels)
        torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-5)


def test_capture_keeps_unet_output_stays_installed_and_records_only_when_active(
    tiny_diffuprompter, tiny_models
):
    """A U-Net fresh from disk, so that its processors are diffusers' own
    until the grounding path installs the capture."""
    sd = load_stable_diffusion(tiny_models[0], torch.device("cpu"), torch.float32)
    unet = sd.unet
    latent, timesteps, embeds, indices = _unet_inputs(tiny_diffuprompter)
    assert sd.captured_unet.store is None  # nothing installed before first use
    with torch.no_grad():
        reference = unet(latent, timesteps, encoder_hidden_states=embeds).sample
        captured_unet, store = sd.captured_unet.module(compiled=False)
        store.reset(indices, (8, 8))
        captured = captured_unet(latent, timesteps, encoder_hidden_states=embeds).sample
        recorded = dict(store.layer_maps)
        store.active = False
        store.layer_maps = {}
        inactive = unet(latent, timesteps, encoder_hidden_states=embeds).sample
    torch.testing.assert_close(captured, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(inactive, reference, atol=1e-5, rtol=1e-4)
    assert set(recorded) == set(cross_attention_modules(unet))
    assert store.layer_maps == {}  # an inactive capture records nothing
    processors = {n: type(p).__name__ for n, p in unet.attn_processors.items()}
    assert all(v == "CrossAttentionCapture" for n, v in processors.items() if ".attn2." in n)
    assert all(v == "AttnProcessor2_0" for n, v in processors.items() if ".attn1." in n)
    assert sd.captured_unet.module(compiled=False) == (unet, store)  # installed once
    assert install_capture(unet) is store  # kept in place, with its store


def test_resolution_maps_group_layers_by_size(tiny_diffuprompter):
    unet, store = tiny_diffuprompter.grounder.sd.captured_unet.module(compiled=False)
    latent, timesteps, embeds, indices = _unet_inputs(tiny_diffuprompter)
    with torch.no_grad():
        store.reset(indices, (8, 8))
        unet(latent, timesteps, encoder_hidden_states=embeds)
    store.active = False
    pyramid = store.resolution_maps()
    assert [tuple(m.shape) for m in pyramid] == [(2, 8, 8), (2, 4, 4), (2, 2, 2)]
    eight = [
        m
        for n, m in store.layer_maps.items()
        if n.startswith("down_blocks.0") or n.startswith("up_blocks.2")
    ]
    torch.testing.assert_close(pyramid[0], torch.stack(eight).mean(0))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("airplane", [4]), ("storage tank", [4, 5]), ("ground track field", [4, 5, 6])],
)
def test_class_tokens_skip_start_token_and_padding(tiny_diffuprompter, name, expected):
    tokenizer = tiny_diffuprompter.grounder.sd.tokenizer
    assert class_token_indices(tokenizer, "Photo of a {}", name) == expected
    assert class_token_indices(tokenizer, "{} seen from above", name)[0] == 1
