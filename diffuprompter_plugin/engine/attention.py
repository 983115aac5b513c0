"""Capture of the U-Net's cross-attention probabilities (Eq. 3).

Only the ``attn2`` (cross-attention) modules get :class:`CrossAttentionCapture`;
self-attention keeps diffusers' memory-efficient SDPA processor. The capture
computes the attention output with SDPA too, and of the probabilities
``softmax(QK^T / sqrt(d))`` only the class tokens' columns, in float32, as
``exp(s_j - logsumexp(s))`` from the logits ``s``. It reduces them at once to
one map per sample (mean over heads and the class's sub-tokens) and hands it
to a :class:`CrossAttentionStore`. Nothing in the forward pass leaves the
graph, so the U-Net compiles with the capture in place; :class:`CapturedUNet`
keeps a U-Net's capture and its compiled form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

TOKEN_SLOTS = 8
"""Class-token slots per sample, padded with zero weight: one shape for
classes of one to eight sub-tokens, so a compiled U-Net is not re-traced."""


class CrossAttentionStore:
    """Collects class-token attention maps of one U-Net call.

    Each sample of the batch may look at another class: sample ``b`` reads
    the tokens ``token_index[b]``, weighted by ``token_weight[b]`` (one over
    the class's sub-token count; zero on padding up to :data:`TOKEN_SLOTS`).

    Attributes:
        token_index: (B, K) long, or (1, K) for one class in all samples.
        token_weight: (B, K) or (1, K) float32.
        latent_size: (height, width) of the latent the U-Net is run on.
        layer_maps: ``{module name: (B, h, w) float32}`` for the last call.
        active: whether the capture processors record (set by :meth:`reset`).
    """

    def __init__(self) -> None:
        self.token_index = torch.zeros(1, 1, dtype=torch.long)
        self.token_weight = torch.zeros(1, 1)
        self.latent_size: tuple[int, int] = (0, 0)
        self.layer_maps: dict[str, torch.Tensor] = {}
        self.active = False

    def reset(
        self,
        token_indices: Sequence[int] | Sequence[Sequence[int]],
        latent_size: tuple[int, int],
        device: torch.device | str = "cpu",
    ) -> None:
        """Empties the store before a U-Net call and starts recording.

        Args:
            token_indices: the class's sub-token positions for all samples,
                or one list per sample of the batch.
            latent_size: (h, w) of the U-Net's input latent.
            device: where the U-Net runs.
        """
        rows = [token_indices] if isinstance(token_indices[0], int) else token_indices
        width = max(TOKEN_SLOTS, *(len(r) for r in rows))
        index = [list(r) + [r[0]] * (width - len(r)) for r in rows]
        weight = [[1 / len(r)] * len(r) + [0.0] * (width - len(r)) for r in rows]
        self.token_index = torch.tensor(index, dtype=torch.long, device=device)
        self.token_weight = torch.tensor(weight, dtype=torch.float32, device=device)
        self.latent_size = latent_size
        self.layer_maps = {}
        self.active = True

    def add(
        self,
        name: str,
        query: torch.Tensor,
        key: torch.Tensor,
        scale: float,
        attention_mask: torch.Tensor | None = None,
    ) -> None:
        """Stores the class-token map of one layer.

        Args:
            name: the attention module's name in the U-Net.
            query: (B, heads, h*w, d).
            key: (B, heads, tokens, d).
            scale: the attention's logit scale, ``1 / sqrt(d)``.
            attention_mask: additive mask broadcastable to (B, heads, h*w, tokens).
        """
        batch, heads, pixels, _ = query.shape
        probs = class_token_probabilities(query, key, scale, self.token_index, attention_mask)
        token_map = (probs * self.token_weight[:, None, None, :]).sum(-1).mean(1)
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


def class_token_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    scale: float,
    token_index: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 3 for the class tokens only, in float32.

    Args:
        query: (B, heads, N, d); key: (B, heads, T, d).
        token_index: (B, K) or (1, K) token positions per sample.

    Returns:
        (B, heads, N, K): ``softmax(Q K^T * scale)`` at the given tokens,
        computed as ``exp(s_j - logsumexp(s))``.
    """
    batch, heads, pixels, _ = query.shape
    logits = (query.float() @ key.float().transpose(-1, -2)) * scale
    if attention_mask is not None:
        logits = logits + attention_mask.float()
    index = token_index[:, None, None, :].expand(batch, heads, pixels, -1)
    return (logits.gather(-1, index) - logits.logsumexp(-1, keepdim=True)).exp()


class CrossAttentionCapture:
    """Attention processor for ``attn2`` modules that records Eq. 3 while
    the store is active; its output is diffusers' ``AttnProcessor2_0``'s."""

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
        if encoder_hidden_states is None:
            raise RuntimeError(f"{self.name} is not a cross-attention layer")
        batch, tokens, _ = encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, tokens)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        query = _heads(attn.to_q(hidden_states), attn.heads)
        key = _heads(attn.to_k(encoder_hidden_states), attn.heads)
        value = _heads(attn.to_v(encoder_hidden_states), attn.heads)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if self.store.active:
            self.store.add(self.name, query, key, attn.scale, attention_mask)

        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        out = out.transpose(1, 2).flatten(2).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads*d) -> (B, heads, N, d)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


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


def install_capture(unet: torch.nn.Module) -> CrossAttentionStore:
    """Puts capture processors on the U-Net's ``attn2`` modules for good and
    returns their store, inactive until :meth:`CrossAttentionStore.reset`;
    a U-Net that has them already keeps them and their store. Processors
    that stay in place keep a compiled U-Net's graph valid."""
    modules = cross_attention_modules(unet)
    processors = [module.processor for module in modules.values()]
    first = processors[0]
    if isinstance(first, CrossAttentionCapture) and all(
        isinstance(p, CrossAttentionCapture) and p.store is first.store for p in processors
    ):
        return first.store
    store = CrossAttentionStore()
    for name, module in modules.items():
        module.set_processor(CrossAttentionCapture(store, name))
    return store


class CapturedUNet:
    """A U-Net's capture and compile state: its cross-attention capture is
    installed on first use and stays; its ``torch.compile`` form is built
    once and kept, so every grounder sharing the U-Net pays the compile
    warm-up once per process.

    Attributes:
        unet: the eager U-Net.
        store: the capture's store, None until first use.
        compiled: the compiled U-Net, None until first asked for.
    """

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet
        self.store: CrossAttentionStore | None = None
        self.compiled: torch.nn.Module | None = None

    def module(self, compiled: bool) -> tuple[torch.nn.Module, CrossAttentionStore]:
        """The U-Net to call, compiled when ``compiled``, and its capture's store."""
        if self.store is None:
            self.store = install_capture(self.unet)
        if not compiled:
            return self.unet, self.store
        if self.compiled is None:
            self.compiled = torch.compile(self.unet)
        return self.compiled, self.store


def compiles_unet(setting: str, device: torch.device) -> bool:
    """Whether ``DiffuPrompterConfig.compile_unet`` compiles on ``device``:
    ``"auto"`` does on CUDA, where it pays off, and not on the CPU."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")
