"""Eq. 3: the captured maps are the cross-attention softmax of the class tokens."""

from __future__ import annotations

import math

import pytest
import torch

from diffuprompter_plugin.engine.attention import capture_cross_attention, cross_attention_modules
from diffuprompter_plugin.engine.grounding import class_token_indices


def _unet_inputs(prompter, class_name="storage tank", batch=2):
    grounder = prompter.grounder
    embeds, indices = grounder.embed_prompt(class_name)
    latent = torch.randn(batch, 4, 8, 8)
    timesteps = torch.full((batch,), 40, dtype=torch.long)
    return latent, timesteps, embeds.expand(batch, -1, -1), indices


def test_captured_attention_equals_explicit_softmax(prompter):
    unet = prompter.grounder.sd.unet
    latent, timesteps, embeds, indices = _unet_inputs(prompter)
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
        with torch.no_grad(), capture_cross_attention(unet) as store:
            store.reset(indices, (8, 8))
            unet(latent, timesteps, encoder_hidden_states=embeds)
    finally:
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


def test_capture_keeps_unet_output_and_restores_processors(prompter):
    unet = prompter.grounder.sd.unet
    latent, timesteps, embeds, indices = _unet_inputs(prompter)
    before = {n: type(p) for n, p in unet.attn_processors.items()}
    with torch.no_grad():
        reference = unet(latent, timesteps, encoder_hidden_states=embeds).sample
        with capture_cross_attention(unet) as store:
            store.reset(indices, (8, 8))
            captured = unet(latent, timesteps, encoder_hidden_states=embeds).sample
            during = {n: type(p).__name__ for n, p in unet.attn_processors.items()}
    torch.testing.assert_close(captured, reference, atol=1e-5, rtol=1e-4)
    assert {n: type(p) for n, p in unet.attn_processors.items()} == before
    assert all(v == "CrossAttentionCapture" for n, v in during.items() if ".attn2." in n)
    assert all(v == "AttnProcessor2_0" for n, v in during.items() if ".attn1." in n)


def test_resolution_maps_group_layers_by_size(prompter):
    unet = prompter.grounder.sd.unet
    latent, timesteps, embeds, indices = _unet_inputs(prompter)
    with torch.no_grad(), capture_cross_attention(unet) as store:
        store.reset(indices, (8, 8))
        unet(latent, timesteps, encoder_hidden_states=embeds)
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
def test_class_tokens_skip_start_token_and_padding(prompter, name, expected):
    tokenizer = prompter.grounder.sd.tokenizer
    assert class_token_indices(tokenizer, "Photo of a {}", name) == expected
    assert class_token_indices(tokenizer, "{} seen from above", name)[0] == 1
