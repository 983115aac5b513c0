"""Capture of the U-Net's cross-attention probabilities (Eq. 3).

Only the ``attn2`` (cross-attention) modules get :class:`CrossAttentionCapture`;
self-attention keeps diffusers' memory-efficient SDPA processor. The capture
computes ``softmax(QK^T / sqrt(d))`` explicitly in float32 (77 keys make this
cheap), reduces it at once to the class tokens averaged over heads and tokens,
and hands the reduced map to a :class:`CrossAttentionStore`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch


class CrossAttentionStore:
    """Collects class-token attention maps of one U-Net call.

    Attributes:
        token_indices: positions of the class's sub-tokens in the prompt.
        latent_size: (height, width) of the latent the U-Net is run on.
        layer_maps: ``{module name: (B, h, w) float32}`` for the last call.
    """

    def __init__(self) -> None:
        self.token_indices: list[int] = []
        self.latent_size: tuple[int, int] = (0, 0)
        self.layer_maps: dict[str, torch.Tensor] = {}

    def reset(self, token_indices: Sequence[int], latent_size: tuple[int, int]) -> None:
        """Empties the store before a U-Net call for the given class tokens."""
        self.token_indices = list(token_indices)
        self.latent_size = latent_size
        self.layer_maps = {}

    def add(self, name: str, probs: torch.Tensor) -> None:
        """Stores the class-token map of one layer.

        Args:
            name: the attention module's name in the U-Net.
            probs: attention probabilities, shape (B, heads, h*w, tokens).
        """
        batch, _, pixels, _ = probs.shape
        token_map = probs[..., self.token_indices].mean(dim=(1, 3))
        height, width = self.spatial_shape(pixels)
        self.layer_maps[name] = token_map.reshape(batch, height, width)

    def spatial_shape(self, pixels: int) -> tuple[int, int]:
        """Infers a layer's (h, w) from its pixel count and the latent size."""
        height, width = self.latent_size
        factor = round(math.sqrt(height * width / pixels))
        shape = (math.ceil(height / factor), math.ceil(width / factor))
        if shape[0] * shape[1] != pixels:
            raise RuntimeError(
                f"Cannot map {pixels} attention pixels onto latent {height}x{width}"
            )
        return shape

    def resolution_maps(self) -> list[torch.Tensor]:
        """Averages the layers of each resolution: one (B, h, w) map per size,
        largest first (the cross-attention pyramid A^s of Eq. 4)."""
        by_size: dict[tuple[int, int], list[torch.Tensor]] = {}
        for layer_map in self.layer_maps.values():
            by_size.setdefault(tuple(layer_map.shape[1:]), []).append(layer_map)
        sizes = sorted(by_size, key=lambda s: s[0] * s[1], reverse=True)
        return [torch.stack(by_size[s]).mean(0) for s in sizes]


class CrossAttentionCapture:
    """Attention processor for ``attn2`` modules that records Eq. 3.

    Its output equals diffusers' ``AttnProcessor`` up to the softmax being
    computed in float32 and cast back to the value dtype.
    """

    def __init__(self, store: CrossAttentionStore, name: str) -> None:
        self.store = store
        self.name = name

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            raise RuntimeError(f"{self.name} is not a cross-attention layer")
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attention_probabilities(query, key, attn.scale, attention_mask)
        _, pixels, tokens = probs.shape
        self.store.add(self.name, probs.view(-1, attn.heads, pixels, tokens))

        out = attn.batch_to_head_dim(torch.bmm(probs.to(value.dtype), value))
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def attention_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    scale: float,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 3 in float32: ``softmax(Q K^T * scale)`` for (B*heads, N, d) inputs."""
    scores = torch.bmm(query.float(), key.float().transpose(1, 2)) * scale
    if attention_mask is not None:
        scores = scores + attention_mask.float()
    return scores.softmax(dim=-1)


def cross_attention_modules(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Returns the U-Net's cross-attention modules (``attn2``) by name."""
    modules = {
        name: module
        for name, module in unet.named_modules()
        if name.endswith("attn2") and hasattr(module, "set_processor")
    }
    if not modules:
        raise RuntimeError("The U-Net has no cross-attention ('attn2') layers")
    return modules


@contextlib.contextmanager
def capture_cross_attention(unet: torch.nn.Module) -> Iterator[CrossAttentionStore]:
    """Installs capture processors on ``attn2`` modules for the ``with`` block
    and restores the original processors afterwards."""
    store = CrossAttentionStore()
    modules = cross_attention_modules(unet)
    originals = {name: module.processor for name, module in modules.items()}
    try:
        for name, module in modules.items():
            module.set_processor(CrossAttentionCapture(store, name))
        yield store
    finally:
        for name, module in modules.items():
            module.set_processor(originals[name])
