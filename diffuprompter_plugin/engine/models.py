"""Loading of Stable Diffusion and SAM weights, and device selection.

Stable Diffusion comes from a Hugging Face hub id, a local diffusers folder or
an already-built pipeline. SAM comes from a registry type (``vit_h``,
``vit_l``, ``vit_b``) with a checkpoint path or Meta's published checkpoint
(downloaded into a cache and checked by SHA-256), from a folder holding a
custom architecture (``sam_config.json`` + ``sam.pth``), or as a built model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .attention import CrossAttentionStore, install_capture
from .config import DEFAULT_SAM_MODEL, DEFAULT_SD_MODEL
from .errors import ModelUnavailableError

SAM_CHECKPOINTS: dict[str, tuple[str, str]] = {
    "vit_h": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
    "vit_l": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_b": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
}
"""Meta's published SAM checkpoints: registry type -> (URL, SHA-256)."""

SAM_CONFIG_FILE = "sam_config.json"
SAM_WEIGHTS_FILE = "sam.pth"


@dataclass
class StableDiffusion:
    """The Stable Diffusion parts DiffuPrompter uses (no safety checker).

    The U-Net gets its cross-attention capture once, on first use, and its
    compiled form is built once and kept here: every grounder sharing these
    parts pays the compile warm-up only once per process.
    """

    vae: Any
    unet: Any
    tokenizer: Any
    text_encoder: Any
    scheduler: Any
    name: str
    attention: CrossAttentionStore | None = field(default=None, repr=False)
    compiled_unet: Any = field(default=None, repr=False)

    def capturing_unet(self, compiled: bool) -> tuple[Any, CrossAttentionStore]:
        """The U-Net with its cross-attention capture installed, compiled with
        ``torch.compile`` when ``compiled``, and the capture's store."""
        if self.attention is None:
            self.attention = install_capture(self.unet)
        if not compiled:
            return self.unet, self.attention
        if self.compiled_unet is None:
            self.compiled_unet = torch.compile(self.unet)
        return self.compiled_unet, self.attention


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Returns ``device``, or CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """float16 on GPUs, float32 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.float32


def compiles_unet(setting: str, device: torch.device) -> bool:
    """Whether ``DiffuPrompterConfig.compile_unet`` compiles on ``device``:
    ``"auto"`` does on CUDA, where it pays off, and not on the CPU."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def cache_dir() -> Path:
    """Folder for downloaded checkpoints (``$DIFFUPROMPTER_CACHE`` overrides)."""
    default = Path.home() / ".cache" / "diffuprompter"
    return Path(os.environ.get("DIFFUPROMPTER_CACHE", default))


def load_stable_diffusion(
    sd_model: str | os.PathLike | Any,
    device: torch.device,
    dtype: torch.dtype,
) -> StableDiffusion:
    """Loads SD from a hub id, a local diffusers folder or a built pipeline.

    Raises:
        ModelUnavailableError: the weights are missing or cannot be fetched.
    """
    if not isinstance(sd_model, (str, os.PathLike)):
        parts = {k: getattr(sd_model, k, None) for k in _SD_PARTS}
        missing = [k for k, v in parts.items() if v is None]
        if missing:
            raise TypeError(f"sd_model object lacks {missing}; pass a diffusers pipeline")
        sd = StableDiffusion(**parts, name=type(sd_model).__name__)
    else:
        sd = _load_sd_parts(os.fspath(sd_model), dtype)
    extra = getattr(sd.unet.config, "addition_embed_type", None)
    if extra is not None:
        raise ValueError(
            f"Stable Diffusion '{sd.name}' has a U-Net with added '{extra}' conditioning "
            "(SDXL and its kind), which DiffuPrompter does not drive: use an SD v1.x "
            "or v2.x checkpoint"
        )
    sd.scheduler = _ddpm_scheduler(sd.scheduler)
    for module in (sd.vae, sd.unet, sd.text_encoder):
        module.to(device)
        if module.dtype != dtype:
            module.to(dtype)
        module.eval().requires_grad_(False)
    return sd


def _has_accelerate() -> bool:
    """Whether ``accelerate`` is installed: diffusers then loads weights
    without first initialising the models (``low_cpu_mem_usage``); without
    it, asking for that only prints a warning on every load."""
    return importlib.util.find_spec("accelerate") is not None


_SD_PARTS = ("vae", "unet", "tokenizer", "text_encoder", "scheduler")


def _load_sd_parts(name: str, dtype: torch.dtype) -> StableDiffusion:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    loaders = {
        "vae": AutoencoderKL,
        "unet": UNet2DConditionModel,
        "tokenizer": CLIPTokenizer,
        "text_encoder": CLIPTextModel,
        "scheduler": DDPMScheduler,
    }
    parts = {}
    for part, loader in loaders.items():
        try:
            kwargs = {}
            if part in ("vae", "unet"):  # without accelerate, say what diffusers falls back to
                kwargs = {"torch_dtype": dtype, "low_cpu_mem_usage": _has_accelerate()}
            parts[part] = loader.from_pretrained(name, subfolder=part, **kwargs)
        except (OSError, ValueError) as e:
            raise ModelUnavailableError(
                f"Cannot load the Stable Diffusion '{part}' from '{name}': {e}\n"
                "Download a diffusers-format SD v1.x checkpoint with internet access, "
                f"e.g. `hf download {DEFAULT_SD_MODEL} --local-dir PATH`, then pass "
                "sd_model=PATH (a folder holding vae/, unet/, tokenizer/, "
                "text_encoder/ and scheduler/)."
            ) from e
    return StableDiffusion(**parts, name=name)


def _ddpm_scheduler(scheduler: Any) -> Any:
    """A DDPM scheduler with the model's noise schedule: its ``add_noise``
    indexes the raw training timestep, whatever sampler the model ships."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config)


def missing_weights(
    sd_model: str | os.PathLike = DEFAULT_SD_MODEL,
    sam_model: str | os.PathLike = DEFAULT_SAM_MODEL,
    sam_checkpoint: str | os.PathLike | None = None,
    timeout: float = 5.0,
) -> list[str]:
    """Why the weights of ``sd_model`` and of SAM cannot be had, one line
    each (empty when both can), found without loading them: local files are
    looked up, hub ids in the Hugging Face cache, and what is not cached is
    asked of its server once, with ``timeout``, not retried."""
    missing = []
    sd = os.fspath(sd_model)
    if _is_local(sd):
        absent = [part for part in _SD_PARTS if not (Path(sd) / part).is_dir()]
        if absent:
            missing.append(f"Stable Diffusion folder '{sd}' lacks {absent}")
    elif not _hub_has(sd, timeout):
        missing.append(
            f"Stable Diffusion '{sd}' is not in the Hugging Face cache and the hub "
            "cannot be reached"
        )
    sam = os.fspath(sam_model)
    if Path(sam).is_dir():
        absent = [f for f in (SAM_CONFIG_FILE, SAM_WEIGHTS_FILE) if not (Path(sam) / f).is_file()]
        if absent:
            missing.append(f"SAM folder '{sam}' lacks {absent}")
    elif sam not in SAM_CHECKPOINTS:
        missing.append(f"SAM '{sam}' is neither {sorted(SAM_CHECKPOINTS)} nor a folder")
    elif sam_checkpoint is not None:
        if not Path(sam_checkpoint).is_file():
            missing.append(f"SAM checkpoint '{os.fspath(sam_checkpoint)}' does not exist")
    else:
        url = SAM_CHECKPOINTS[sam][0]
        if not (cache_dir() / url.rsplit("/", 1)[1]).is_file() and not _reachable(url, timeout):
            missing.append(
                f"SAM '{sam}' checkpoint is not in {cache_dir()} and {url} cannot be reached"
            )
    return missing


def load_tokenizer(sd_model: str | os.PathLike) -> Any | None:
    """The CLIP tokenizer of ``sd_model`` alone (a few small files, no
    weights), from its diffusers folder or the Hugging Face cache, never
    from the network; None when its files are not on this machine."""
    name = os.fspath(sd_model)
    if _is_local(name):
        folder = Path(name) / "tokenizer"
    else:
        import huggingface_hub

        config = huggingface_hub.try_to_load_from_cache(name, "tokenizer/tokenizer_config.json")
        if not isinstance(config, str):
            return None
        folder = Path(config).parent
    vocabularies = (["tokenizer.json"], ["vocab.json", "merges.txt"])  # fast, or slow format
    has_vocabulary = any(all((folder / f).is_file() for f in v) for v in vocabularies)
    if not (folder / "tokenizer_config.json").is_file() or not has_vocabulary:
        return None  # CLIPTokenizer would make an empty one without complaint
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder)


def _is_local(name: str) -> bool:
    """A path rather than a hub id (``org/name``)."""
    return os.path.isabs(name) or name.startswith(".") or os.path.exists(name)


def _hub_has(repo_id: str, timeout: float) -> bool:
    """The model is in the local Hugging Face cache, or the hub answers for it."""
    import huggingface_hub

    if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "model_index.json"), str):
        return True
    try:
        huggingface_hub.model_info(repo_id, timeout=timeout)
    except Exception:  # offline, unknown repo, gated: any failure means not available
        return False
    return True


def _reachable(url: str, timeout: float) -> bool:
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except OSError:
        return False


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
            checkpoint is downloaded into :func:`cache_dir` and verified.
        device: where to put the model (default: :func:`resolve_device`).

    Raises:
        ModelUnavailableError: the checkpoint is missing or cannot be fetched.
    """
    from segment_anything import sam_model_registry

    device = resolve_device(device)
    if isinstance(sam_model, (str, os.PathLike)) and Path(sam_model).is_dir():
        folder = Path(sam_model)
        sam = build_sam(_read_sam_config(folder))
        checkpoint = folder / SAM_WEIGHTS_FILE
    elif isinstance(sam_model, str):
        if sam_model not in SAM_CHECKPOINTS:
            raise ValueError(
                f"Unknown SAM model '{sam_model}': use one of {sorted(SAM_CHECKPOINTS)} "
                f"or a folder holding {SAM_CONFIG_FILE} and {SAM_WEIGHTS_FILE}"
            )
        sam = sam_model_registry[sam_model]()
        checkpoint = Path(sam_checkpoint) if sam_checkpoint else download_sam_checkpoint(sam_model)
    else:
        sam = sam_model
        checkpoint = None
    if checkpoint is not None:
        _load_checkpoint(sam, checkpoint)
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


def download_sam_checkpoint(model_type: str, folder: Path | None = None) -> Path:
    """Returns Meta's checkpoint for ``model_type``, downloading it into the
    cache when absent; its SHA-256 is checked before it is kept.

    Raises:
        ModelUnavailableError: the download failed or the file is corrupt.
    """
    url, sha256 = SAM_CHECKPOINTS[model_type]
    folder = folder or cache_dir()
    path = folder / url.rsplit("/", 1)[1]
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".part", delete=False) as tmp:
        try:
            _download(url, tmp)
            tmp.close()
            digest = file_sha256(Path(tmp.name))
            if digest != sha256:
                raise ModelUnavailableError(
                    f"Checksum mismatch for {url}: got {digest}, expected {sha256}"
                )
            shutil.move(tmp.name, path)
        except OSError as e:
            raise ModelUnavailableError(
                f"Cannot download SAM '{model_type}' from {url}: {e}\n"
                f"Download it by hand to '{path}', or pass sam_checkpoint=PATH."
            ) from e
        finally:
            Path(tmp.name).unlink(missing_ok=True)
    return path


def _download(url: str, out: Any) -> None:
    with urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[1]) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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
