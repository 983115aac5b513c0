"""Textual concept grounding with loop-sampling averaging (sections 2.2.1-2.2.2).

For one image and class: encode the image with SD's VAE, noise the latent at
the fixed timestep for L seeded noise draws, run the U-Net on the prompt in
micro-batches of draws, aggregate each draw's cross-attention pyramid (Eq. 4)
and average the draws (LSAD, Eq. 9). An image's classes, and the tiles of a
scene that share a working size, share the micro-batches: a U-Net call runs
(tile, class, noise draw) triples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .attention import compiles_unet
from .class_names import ClassName
from .config import DiffuPrompterConfig
from .image import ImageLike, to_rgb_uint8
from .stable_diffusion import StableDiffusion

EPS = 1e-12
LATENT_STRIDE = 64
"""Working sides are multiples of 64 px: SD's 8x VAE times the U-Net's three 2x
downsamplings."""


def class_token_indices(tokenizer, template: str, class_name: str) -> list[int]:
    """Positions of the class's sub-tokens (its :attr:`ClassName.prompt_name
    <diffuprompter_plugin.engine.class_names.ClassName.prompt_name>`'s) in
    the tokenised prompt.

    The prefix before ``{}`` and the class are tokenised separately; the start
    token is position 0, so neither it nor padding is ever selected.
    """
    prefix = template.split("{}")[0]
    checked = ClassName(class_name)
    name, prompt = checked.prompt_name, checked.prompt(template)
    n_prefix = len(tokenizer(prefix, add_special_tokens=False).input_ids)
    class_ids = tokenizer(name, add_special_tokens=False).input_ids
    prompt_ids = tokenizer(prompt).input_ids
    indices = list(range(1 + n_prefix, 1 + n_prefix + len(class_ids)))
    if indices[-1] >= tokenizer.model_max_length - 1:
        raise ValueError(
            f"The prompt for '{name[:60]}' is too long for the text encoder: "
            f"{len(prompt_ids)} tokens, at most {tokenizer.model_max_length} fit"
        )
    if [prompt_ids[i] for i in indices] != class_ids:
        raise ValueError(f"Cannot locate '{name}' in the prompt {prompt!r}")
    return indices


def check_class_prompts(tokenizer, template: str, class_names: Sequence[str]) -> None:
    """Raises ValueError naming a class whose prompt the text encoder cannot
    take (too long) or in which the class cannot be located."""
    for name in class_names:
        class_token_indices(tokenizer, template, name)


def working_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """The (h, w) SD sees: longest side ``resolution``, aspect kept, both sides
    rounded to multiples of 64 px."""
    scale = resolution / max(height, width)

    def side(n: int) -> int:
        return max(LATENT_STRIDE, round(n * scale / LATENT_STRIDE) * LATENT_STRIDE)

    return side(height), side(width)


def normalize(maps: torch.Tensor, normalization: str) -> torch.Tensor:
    """The ``Norm`` of Eq. 4 over the last two dims: min-max to [0, 1], or none."""
    if normalization == "none":
        return maps
    low, span = _span(maps)
    return (maps - low) / span


def _span(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each map's minimum and its range (at least EPS), over the last two dims."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    return low, (maps.amax(dim=(-2, -1), keepdim=True) - low).clamp_min(EPS)


def aggregate_pyramid(
    pyramid: Sequence[torch.Tensor], size: tuple[int, int], normalization: str
) -> torch.Tensor:
    """Eq. 4: each resolution's (B, h, w) map is upsampled bilinearly to
    ``size`` and divided by its max; the mean over resolutions is normalised.

    Returns:
        (B, *size) float32 maps.
    """
    scaled = []
    for level in pyramid:
        up = F.interpolate(level[:, None].float(), size=size, mode="bilinear", align_corners=False)
        up = up[:, 0]
        scaled.append(up / up.amax(dim=(1, 2), keepdim=True).clamp_min(EPS))
    return normalize(torch.stack(scaled).mean(0), normalization)


def pyramid_peak(pyramid: Sequence[torch.Tensor]) -> torch.Tensor:
    """The absolute strength of a draw's raw pyramid, before Eq. 4 divides
    each level by its max: the mean over resolutions of each (B, h, w)
    level's max attention probability. Returns (B,) float32."""
    return torch.stack([level.float().amax(dim=(1, 2)) for level in pyramid]).mean(0)


class DrawMoments:
    """Per (tile, class) row, the running mean and spread of the per-draw
    Eq. 4 maps over the L noise draws, without keeping any draw's map.

    Welford's algorithm, updated once per U-Net call with all the call's
    draws of a row: their deviations ``d`` from the running mean give the
    new mean ``mean + sum(d) / n`` and ``M2 + sum(d**2) - sum(d)**2 / n``
    (n: the draws seen). A row's first draw sets its mean, so draws that
    all give the same map leave M2 exactly 0.

    Args:
        rows: number of (tile, class) rows.
        shape: (h, w) of the maps.
    """

    def __init__(self, rows: int, shape: tuple[int, int], device: torch.device) -> None:
        self.count = torch.zeros(rows, device=device)
        self.mean = torch.zeros(rows, *shape, device=device)
        self.m2 = torch.zeros(rows, *shape, device=device)

    def add(self, rows: torch.Tensor, maps: torch.Tensor) -> None:
        """Adds draws: ``maps`` (b, h, w) of ``rows`` (b,), each row's draws
        contiguous."""
        firsts = torch.ones_like(rows, dtype=torch.bool)
        firsts[1:] = rows[1:] != rows[:-1]
        new = firsts & (self.count[rows] == 0)
        self.mean[rows[new]] = maps[new]
        touched, local = torch.unique(rows, return_inverse=True)
        deviations = maps - self.mean[rows]
        total = torch.zeros(len(touched), *maps.shape[1:], device=maps.device)
        squares = torch.zeros_like(total)
        total.index_add_(0, local, deviations)
        squares.index_add_(0, local, deviations * deviations)
        self.count[touched] += torch.bincount(local, minlength=len(touched)).float()
        count = self.count[touched][:, None, None]
        self.mean[touched] += total / count
        self.m2[touched] += squares - total * total / count

    def spread(self, normalization: str) -> torch.Tensor:
        """(rows, h, w) standard deviation of the draws, in the units of the
        heatmap Eq. 9 normalises their mean to: divided by the range of the
        row's mean map under ``"minmax"``, so spread and heatmap scale alike."""
        count = self.count.clamp_min(1)[:, None, None]
        std = (self.m2 / count).clamp_min(0).sqrt()
        return std if normalization == "none" else std / _span(self.mean)[1]


class Grounded(NamedTuple):
    """One image's grounding (see :meth:`TextGrounder.tile_heatmaps`).

    Attributes:
        heatmaps: ``{class name: H x W float32 heatmap in [0, 1]}``.
        spreads: ``{class name: H x W float32}``, the draws' spread in the
            heatmap's units (:meth:`DrawMoments.spread`), clipped to [0, 1].
        peaks: ``{class name: mean pyramid_peak over the draws}``; the tiling
            compares the peaks across a scene's tiles.
    """

    heatmaps: dict[str, np.ndarray]
    spreads: dict[str, np.ndarray]
    peaks: dict[str, float]


class LoopCall(NamedTuple):
    """What one U-Net call of :meth:`TextGrounder.loop_maps` gives: a batch of
    (tile, class, noise draw) triples.

    Attributes:
        tiles: (b,) long, the index of each triple's latent (tile) in the batch
            of latents.
        classes: (b,) long, the class index of each triple.
        maps: (b, h, w) float32 Eq. 4 maps.
        peaks: (b,) float32 :func:`pyramid_peak` of each triple.
    """

    tiles: torch.Tensor
    classes: torch.Tensor
    maps: torch.Tensor
    peaks: torch.Tensor


class TextGrounder:
    """Produces DiffuPrompter heatmaps with Stable Diffusion.

    Args:
        sd: the loaded Stable Diffusion parts.
        config: method settings.
        device: where the models live.
        dtype: model dtype (attention maths always runs in float32).
    """

    def __init__(
        self,
        sd: StableDiffusion,
        config: DiffuPrompterConfig,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.sd = sd
        self.config = config
        self.device = device
        self.dtype = dtype
        self._embeddings: dict[tuple[str, str], tuple[torch.Tensor, list[int]]] = {}

    def check_prompts(self, class_names: Sequence[str]) -> None:
        """:func:`check_class_prompts` with this model's tokenizer and template."""
        check_class_prompts(self.sd.tokenizer, self.config.template, class_names)

    def heatmaps(
        self,
        image: ImageLike,
        class_names: Sequence[str],
        progress: bool = False,
    ) -> dict[str, np.ndarray]:
        """Returns ``{class name: H x W float32 heatmap in [0, 1]}`` at the
        image's own size: the one-tile case of :meth:`tile_heatmaps`. With
        ``progress``, a bar counts the U-Net calls done."""
        return self.ground(image, class_names, progress).heatmaps

    def ground(
        self, image: ImageLike, class_names: Sequence[str], progress: bool = False
    ) -> Grounded:
        """Heatmaps and draw spreads of one image: the one-tile case of
        :meth:`tile_heatmaps`."""
        (grounded,) = self.tile_heatmaps([image], class_names, progress)
        return grounded

    @torch.inference_mode()
    def tile_heatmaps(
        self,
        images: Iterable[ImageLike],
        class_names: Sequence[str],
        progress: bool = False,
    ) -> Iterator[Grounded]:
        """The heatmaps of several images (a scene's tiles) grounded together.

        The VAE encodes each image once for all classes; images whose latents
        have the same shape run their (tile, class, noise draw) triples in
        shared U-Net calls (see :meth:`loop_maps`). An image's heatmaps are
        those it gets alone: its draws are seeded by draw index, whatever
        the batch.

        Yields:
            per image, in order, its :class:`Grounded`. The images are
            upsampled to their own size one at a time, as they are taken.
            With ``progress``, a bar counts the U-Net calls done.
        """
        names = list(class_names)
        sizes, latents = [], []
        for image in images:
            rgb = to_rgb_uint8(image)
            sizes.append(rgb.shape[:2])
            latents.append(self.encode(rgb))
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, latent in enumerate(latents):
            by_shape.setdefault(tuple(latent.shape), []).append(i)
        calls = sum(self.unet_calls(len(tiles), len(names)) for tiles in by_shape.values())
        grounded: dict[int, tuple[torch.Tensor, ...]] = {}
        with tqdm(total=calls, desc="U-Net calls", disable=not progress) as bar:
            for tiles in by_shape.values():
                group = torch.cat([latents[i] for i in tiles])
                grounding = self.latent_heatmaps(group, names, bar)
                parts = (part.split(len(names)) for part in grounding)
                grounded.update(zip(tiles, zip(*parts, strict=True), strict=True))
        for i, size in enumerate(sizes):
            tile_heat, tile_spread, tile_peaks = grounded.pop(i)

            def full(maps: torch.Tensor, size: tuple[int, int] = size) -> list[np.ndarray]:
                up = F.interpolate(maps[:, None], size=size, mode="bilinear")[:, 0]
                return list(up.clamp(0, 1).cpu().numpy().astype(np.float32))

            yield Grounded(
                dict(zip(names, full(tile_heat), strict=True)),
                dict(zip(names, full(tile_spread), strict=True)),
                dict(zip(names, tile_peaks.tolist(), strict=True)),
            )

    def encode(self, rgb: np.ndarray) -> torch.Tensor:
        """VAE latent (1, 4, h/8, w/8) of an RGB uint8 image at the working size,
        from the posterior mode (deterministic) times the scaling factor."""
        size = working_size(*rgb.shape[:2], self.config.resolution)
        pixels = torch.tensor(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
        pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False)
        pixels = pixels.clamp(-1, 1).to(self.device, self.dtype)
        latent = self.sd.vae.encode(pixels).latent_dist.mode()
        return latent * self.sd.vae.config.scaling_factor

    def embed_prompt(self, class_name: str) -> tuple[torch.Tensor, list[int]]:
        """CLIP embedding (1, 77, D) of the prompt and the class token indices;
        computed once per template and class, then reused."""
        key = (self.config.template, class_name)
        if key not in self._embeddings:
            self._embeddings[key] = self._embed(class_name)
        return self._embeddings[key]

    def _embed(self, class_name: str) -> tuple[torch.Tensor, list[int]]:
        tokenizer = self.sd.tokenizer
        indices = class_token_indices(tokenizer, self.config.template, class_name)
        ids = tokenizer(
            ClassName(class_name).prompt(self.config.template),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.sd.text_encoder(ids)[0].to(self.dtype), indices

    def noise(self, latents: torch.Tensor) -> torch.Tensor:
        """The L seeded noise draws (L, 4, h, w) for latents (T, 4, h, w):
        drawn on the CPU, so they are the same on every device, for every
        loop batch size, every class and every tile."""
        generator = torch.Generator().manual_seed(self.config.seed)
        shape = (self.config.loops, *latents.shape[1:])
        return torch.randn(shape, generator=generator).to(self.device, latents.dtype)

    def unet_calls(self, tiles: int, classes: int) -> int:
        """U-Net calls of :meth:`loop_maps` for ``tiles`` latents of one shape
        and ``classes`` classes."""
        return math.ceil(tiles * classes * self.config.loops / self.config.loop_batch_size)

    def loop_maps(self, latents: torch.Tensor, class_names: Sequence[str]) -> Iterator[LoopCall]:
        """Runs the T x C x L (tile, class, noise draw) triples of latents
        (T, 4, h, w), tile by tile and class by class, in U-Net calls of
        ``loop_batch_size`` triples, so that classes and tiles share a call
        when they fit in it; yields one :class:`LoopCall` per U-Net call."""
        embeds, indices = zip(*(self.embed_prompt(name) for name in class_names), strict=True)
        embeds = torch.cat(embeds)
        noise = self.noise(latents)
        loops = self.config.loops
        pairs = len(class_names) * loops
        triples = torch.arange(len(latents) * pairs)
        tiles, draws = triples // pairs, triples % loops
        classes = triples // loops % len(class_names)
        size = tuple(latents.shape[-2:])
        compiled = compiles_unet(self.config.compile_unet, self.device)
        unet, store = self.sd.captured_unet.module(compiled)
        try:
            for call in triples.split(self.config.loop_batch_size):
                call_tiles = tiles[call].to(self.device)
                call_classes = classes[call].to(self.device)
                timesteps = torch.full(
                    (len(call),), self.config.timestep, device=self.device, dtype=torch.long
                )
                noisy = self.sd.scheduler.add_noise(
                    latents[call_tiles], noise[draws[call]], timesteps
                )
                store.reset([indices[c] for c in classes[call].tolist()], size, self.device)
                unet(noisy, timesteps, encoder_hidden_states=embeds[call_classes])
                pyramid = store.resolution_maps()
                maps = aggregate_pyramid(pyramid, size, self.config.normalization)
                yield LoopCall(call_tiles, call_classes, maps, pyramid_peak(pyramid))
        finally:
            store.active = False

    def latent_heatmaps(
        self, latents: torch.Tensor, class_names: Sequence[str], bar: tqdm | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LSAD (Eq. 9) for latents (T, 4, h, w): per tile and class, the mean
        of its L loop maps, normalised, (T * C, h, w) at latent size, row
        ``t * C + c``; the draws' spread in the same units
        (:meth:`DrawMoments.spread`), (T * C, h, w); and the mean
        :func:`pyramid_peak` of its draws, (T * C,). A given ``bar``
        advances by one per U-Net call."""
        rows = len(latents) * len(class_names)
        total = torch.zeros(rows, *latents.shape[-2:], device=self.device)
        moments = DrawMoments(rows, tuple(latents.shape[-2:]), self.device)
        peaks = torch.zeros(rows, device=self.device)
        for call in self.loop_maps(latents, class_names):
            row = call.tiles * len(class_names) + call.classes
            total.index_add_(0, row, call.maps)
            moments.add(row, call.maps)
            peaks.index_add_(0, row, call.peaks)
            if bar is not None:
                bar.update()
        loops, normalization = self.config.loops, self.config.normalization
        heat = normalize(total / loops, normalization)
        return heat, moments.spread(normalization), peaks / loops
