"""Loading and building SAM, as segment-anything's ``build_sam.py`` does, plus
a custom (e.g. tiny) architecture kept as a folder.

SAM comes from a registry type (``vit_h``, ``vit_l``, ``vit_b``) with a
checkpoint path or Meta's published checkpoint (see
:mod:`~diffuprompter_plugin.engine.weights`), from a folder holding a custom
architecture (``sam_config.json`` + ``sam.pth``), or as a built model.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .config import DEFAULT_SAM_MODEL
from .device import resolve_device
from .errors import ModelUnavailableError
from .weights import (
    SAM_CHECKPOINTS,
    SAM_CONFIG_FILE,
    SAM_WEIGHTS_FILE,
    download_sam_checkpoint,
    sam_source,
)


def load_sam(
    sam_model: str | os.PathLike | Any = DEFAULT_SAM_MODEL,
    sam_checkpoint: str | os.PathLike | None = None,
    device: torch.device | None = None,
) -> Any:
    """Loads SAM from a registry type, a custom-architecture folder or a model.

    Args:
        sam_model: ``"vit_h"``, ``"vit_l"``, ``"vit_b"``, a folder with
            ``sam_config.json`` and ``sam.pth``, or a ``segment_anything`` Sam.
        sam_checkpoint: checkpoint for a registry type; when None, Meta's
            checkpoint is downloaded into
            :func:`~diffuprompter_plugin.engine.weights.cache_dir` and verified.
        device: where to put the model (default: :func:`~.device.resolve_device`).

    Raises:
        ValueError: ``sam_model`` is neither a registry type nor a folder.
        ModelUnavailableError: the checkpoint is missing or cannot be fetched.
    """
    device = resolve_device(device)
    if isinstance(sam_model, (str, os.PathLike)):
        source = sam_source(sam_model, sam_checkpoint)
        if source.folder is not None:
            sam = build_sam(_read_sam_config(source.folder))
        else:
            from segment_anything import sam_model_registry

            sam = sam_model_registry[source.model_type]()
        _load_checkpoint(sam, source.checkpoint or download_sam_checkpoint(source.model_type))
    else:
        sam = sam_model
    return sam.to(device).eval().requires_grad_(False)


def _read_sam_config(folder: Path) -> dict[str, Any]:
    path = folder / SAM_CONFIG_FILE
    if not path.is_file():
        raise ModelUnavailableError(f"SAM folder '{folder}' has no {SAM_CONFIG_FILE}")
    return json.loads(path.read_text())


def _load_checkpoint(sam: Any, path: Path) -> None:
    """Loads the SAM checkpoint ``path`` into ``sam``; a missing, damaged or
    mismatched file is a :class:`ModelUnavailableError` that names it."""
    if not path.is_file():
        raise ModelUnavailableError(
            f"SAM checkpoint '{path}' does not exist. Download it from "
            f"{SAM_CHECKPOINTS[DEFAULT_SAM_MODEL][0]} (or the vit_l/vit_b file) and "
            "pass its path as sam_checkpoint."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's unpickler raises anything on a damaged file
        raise ModelUnavailableError(
            f"SAM checkpoint '{path}' cannot be read ({_brief(e)}); the download "
            "may be incomplete: download it again."
        ) from e
    try:
        sam.load_state_dict(state)
    except RuntimeError as e:
        raise ModelUnavailableError(
            f"SAM checkpoint '{path}' does not fit this SAM architecture ({_brief(e)}); "
            "check that the SAM type (vit_h, vit_l, vit_b) matches the file."
        ) from e


def _brief(error: Exception) -> str:
    """An exception's message on one line, cut to 300 characters."""
    return " ".join(str(error).split())[:300] or type(error).__name__


def build_sam(arch: dict[str, Any]) -> Any:
    """Builds a randomly initialised SAM of a custom (e.g. tiny) architecture.

    ``arch`` keys: encoder_embed_dim, encoder_depth, encoder_num_heads,
    encoder_global_attn_indexes, image_size, patch_size, window_size,
    prompt_embed_dim, decoder_mlp_dim, decoder_depth, decoder_num_heads.
    """
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    embed = arch["prompt_embed_dim"]
    grid = arch["image_size"] // arch["patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=arch["image_size"],
            patch_size=arch["patch_size"],
            embed_dim=arch["encoder_embed_dim"],
            depth=arch["encoder_depth"],
            num_heads=arch["encoder_num_heads"],
            mlp_ratio=4,
            out_chans=embed,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=arch["window_size"],
            global_attn_indexes=arch["encoder_global_attn_indexes"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=embed,
            image_embedding_size=(grid, grid),
            input_image_size=(arch["image_size"], arch["image_size"]),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=arch["decoder_depth"],
                embedding_dim=embed,
                mlp_dim=arch["decoder_mlp_dim"],
                num_heads=arch["decoder_num_heads"],
            ),
            transformer_dim=embed,
            iou_head_depth=3,
            iou_head_hidden_dim=embed,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def save_sam(sam: Any, arch: dict[str, Any], folder: str | os.PathLike) -> Path:
    """Writes a custom SAM as a folder that :func:`load_sam` accepts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SAM_CONFIG_FILE).write_text(json.dumps(arch, indent=2))
    torch.save(sam.state_dict(), folder / SAM_WEIGHTS_FILE)
    return folder
