"""Tiny random-weight Stable Diffusion and SAM, written as real model folders.

They load through the same ``from_pretrained`` path as real weights, so tests,
benchmarks and the quickstart's smoke mode exercise every line of the engine
without a download. Their heatmaps and masks are meaningless by design.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .sam import build_sam, save_sam

SMOKE_WORDS = (
    "photo of a airplane ship storage tank baseball diamond swimming pool tennis "
    "court basketball court roundabout ground track field harbor bridge vehicle "
    "small large plane helicopter playground soccer ball"
)

TINY_SAM_ARCH = {
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "image_size": 64,
    "patch_size": 8,
    "window_size": 4,
    "prompt_embed_dim": 32,
    "decoder_mlp_dim": 64,
    "decoder_depth": 2,
    "decoder_num_heads": 2,
}


def tiny_tokenizer():
    """A CLIP BPE tokenizer whose vocabulary holds every byte character plus
    whole-word merges for the remote-sensing class names."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = []
    for word in sorted(set(SMOKE_WORDS.split())):
        piece = word[0]
        for i, char in enumerate(word[1:], start=1):
            nxt = char + ("</w>" if i == len(word) - 1 else "")
            merges.append((piece, nxt))
            piece += nxt
            vocab_list.append(piece)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def clip_text_encoder(tokenizer, hidden_size: int, layers: int, heads: int):
    """A random-weight CLIP text encoder matching ``tokenizer`` (77 positions,
    MLP width 4 x hidden)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=4 * hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def write_tiny_stable_diffusion(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Writes a random-weight SD (VAE, 3-level U-Net, CLIP text encoder,
    tokenizer, scheduler) in diffusers' folder layout and returns the folder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    folder = Path(folder)
    tokenizer = tiny_tokenizer()
    text_encoder = clip_text_encoder(tokenizer, hidden_size=32, layers=2, heads=4)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    for part, obj in {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }.items():
        obj.save_pretrained(folder / part)
    return folder


def write_tiny_sam(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Writes a random-weight SAM of :data:`TINY_SAM_ARCH` (64 px input)."""
    torch.manual_seed(seed)
    return save_sam(build_sam(TINY_SAM_ARCH), TINY_SAM_ARCH, folder)


def write_tiny_models(folder: str | os.PathLike) -> tuple[Path, Path]:
    """Writes both tiny models under ``folder``; returns (sd folder, sam folder)."""
    folder = Path(folder)
    return write_tiny_stable_diffusion(folder / "sd"), write_tiny_sam(folder / "sam")
