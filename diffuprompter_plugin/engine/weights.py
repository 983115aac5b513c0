"""Where the models' weights are: Meta's SAM checkpoints (download into a
cache, SHA-256 check), the reading of a SAM source, and whether the weights
of Stable Diffusion and SAM can be had, found without loading them.

Stable Diffusion comes from a Hugging Face hub id or a local diffusers
folder; SAM from a registry type (``vit_h``, ``vit_l``, ``vit_b``) with a
checkpoint path or Meta's published checkpoint, or from a folder holding a
custom architecture (``sam_config.json`` + ``sam.pth``). This module imports
neither torch nor the models.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

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
SD_PARTS = ("vae", "unet", "tokenizer", "text_encoder", "scheduler")
"""The parts of a diffusers Stable Diffusion that DiffuPrompter uses, each a
subfolder of a local diffusers folder."""


def cache_dir() -> Path:
    """Folder for downloaded checkpoints (``$DIFFUPROMPTER_CACHE`` overrides)."""
    default = Path.home() / ".cache" / "diffuprompter"
    return Path(os.environ.get("DIFFUPROMPTER_CACHE", default))


def is_local(name: str) -> bool:
    """A path rather than a hub id (``org/name``)."""
    return os.path.isabs(name) or name.startswith(".") or os.path.exists(name)


@dataclass(frozen=True)
class SamSource:
    """Where a SAM's architecture and weights come from (see :func:`sam_source`).

    Attributes:
        model_type: the registry type (``vit_h``, ``vit_l``, ``vit_b``), or
            None for the custom architecture of ``folder``.
        folder: the folder holding ``sam_config.json`` and ``sam.pth``, or None.
        checkpoint: the weights file: the folder's ``sam.pth``, the given
            checkpoint, or None for Meta's checkpoint of ``model_type``
            (see :func:`download_sam_checkpoint`).
    """

    model_type: str | None
    folder: Path | None
    checkpoint: Path | None


def sam_source(
    sam_model: str | os.PathLike, sam_checkpoint: str | os.PathLike | None = None
) -> SamSource:
    """Reads ``sam_model`` as a custom-architecture folder or a registry type.

    Args:
        sam_model: a folder with ``sam_config.json`` and ``sam.pth``, or
            ``"vit_h"``, ``"vit_l"``, ``"vit_b"``.
        sam_checkpoint: checkpoint for a registry type; None for Meta's.

    Raises:
        ValueError: ``sam_model`` is neither a registry type nor a folder.
    """
    name = os.fspath(sam_model)
    if Path(name).is_dir():
        return SamSource(None, Path(name), Path(name) / SAM_WEIGHTS_FILE)
    if name not in SAM_CHECKPOINTS:
        raise ValueError(
            f"SAM '{name}' is neither one of {sorted(SAM_CHECKPOINTS)} nor a folder "
            f"holding {SAM_CONFIG_FILE} and {SAM_WEIGHTS_FILE}"
        )
    return SamSource(name, None, Path(sam_checkpoint) if sam_checkpoint else None)


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
    if is_local(sd):
        absent = [part for part in SD_PARTS if not (Path(sd) / part).is_dir()]
        if absent:
            missing.append(f"Stable Diffusion folder '{sd}' lacks {absent}")
    elif not _hub_has(sd, timeout):
        missing.append(
            f"Stable Diffusion '{sd}' is not in the Hugging Face cache and the hub "
            "cannot be reached"
        )
    try:
        sam = sam_source(sam_model, sam_checkpoint)
    except ValueError as e:
        return [*missing, str(e)]
    if sam.folder is not None:
        absent = [f for f in (SAM_CONFIG_FILE, SAM_WEIGHTS_FILE) if not (sam.folder / f).is_file()]
        if absent:
            missing.append(f"SAM folder '{sam.folder}' lacks {absent}")
    elif sam.checkpoint is not None:
        if not sam.checkpoint.is_file():
            missing.append(f"SAM checkpoint '{sam.checkpoint}' does not exist")
    else:
        url = SAM_CHECKPOINTS[sam.model_type][0]
        if not _cached_checkpoint(url, cache_dir()).is_file() and not _reachable(url, timeout):
            missing.append(
                f"SAM '{sam.model_type}' checkpoint is not in {cache_dir()} and {url} "
                "cannot be reached"
            )
    return missing


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


def _cached_checkpoint(url: str, folder: Path) -> Path:
    """Where the checkpoint downloaded from ``url`` is kept in ``folder``."""
    return folder / url.rsplit("/", 1)[1]


def download_sam_checkpoint(model_type: str, folder: Path | None = None) -> Path:
    """Returns Meta's checkpoint for ``model_type``, downloading it into
    ``folder`` (default: :func:`cache_dir`) when absent; its SHA-256 is
    checked before it is kept.

    Raises:
        ModelUnavailableError: the download failed or the file is corrupt.
    """
    url, sha256 = SAM_CHECKPOINTS[model_type]
    folder = folder or cache_dir()
    path = _cached_checkpoint(url, folder)
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


def _download(url: str, out: BinaryIO) -> None:
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
