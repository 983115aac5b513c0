"""Model loading: local folders, built objects, SAM download and clear errors;
where the weights are, found without loading them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from diffuprompter_plugin.engine import weights
from diffuprompter_plugin.engine.device import default_dtype, resolve_device
from diffuprompter_plugin.engine.errors import ModelUnavailableError
from diffuprompter_plugin.engine.sam import load_sam
from diffuprompter_plugin.engine.stable_diffusion import load_stable_diffusion, load_tokenizer
from diffuprompter_plugin.engine.weights import (
    SamSource,
    download_sam_checkpoint,
    missing_weights,
    sam_source,
)


def test_device_and_dtype_defaults():
    assert resolve_device("cpu").type == "cpu"
    assert default_dtype(torch.device("cpu")) == torch.float32
    assert default_dtype(torch.device("cuda")) == torch.float16


def test_sd_folder_loads_with_ddpm_schedule(tiny_models):
    sd = load_stable_diffusion(tiny_models[0], torch.device("cpu"), torch.float32)
    assert type(sd.scheduler).__name__ == "DDPMScheduler"
    assert sd.scheduler.config.beta_schedule == "scaled_linear"
    assert round(float(sd.scheduler.alphas_cumprod[40]), 3) == 0.962  # method.md table


def test_built_pipeline_and_sam_objects_are_accepted(tiny_models, tiny_diffuprompter):
    sd = tiny_diffuprompter.grounder.sd
    pipe = SimpleNamespace(
        vae=sd.vae,
        unet=sd.unet,
        tokenizer=sd.tokenizer,
        text_encoder=sd.text_encoder,
        scheduler=sd.scheduler,
    )
    loaded = load_stable_diffusion(pipe, torch.device("cpu"), torch.float32)
    assert loaded.unet is sd.unet
    sam = tiny_diffuprompter.sam_prompter.predictor.model
    assert load_sam(sam, device="cpu") is sam
    with pytest.raises(TypeError, match="lacks"):
        load_stable_diffusion(SimpleNamespace(vae=1), torch.device("cpu"), torch.float32)
    sdxl_unet = SimpleNamespace(config=SimpleNamespace(addition_embed_type="text_time"))
    sdxl = SimpleNamespace(**{**vars(pipe), "unet": sdxl_unet})
    with pytest.raises(ValueError, match="added 'text_time' conditioning .*SD v1.x"):
        load_stable_diffusion(sdxl, torch.device("cpu"), torch.float32)


def test_the_tokenizer_alone_checks_prompts_without_weights(tiny_models, tmp_path):
    from diffuprompter_plugin.engine.pipeline import check_prompts

    sd = tiny_models[0]
    assert load_tokenizer(sd).model_max_length == 77
    assert load_tokenizer(tmp_path / "absent") is None
    assert load_tokenizer("nobody/not-cached") is None  # the cache only, no network
    assert check_prompts(sd, "Photo of a {}", ["ship", "storage_tank"]) is True
    with pytest.raises(ValueError, match="'xxxx.*' is too long for the text encoder: 9"):
        check_prompts(sd, "Photo of a {}", ["ship", "x" * 90])
    assert check_prompts("nobody/not-cached", "Photo of a {}", ["x" * 90]) is False


def test_missing_sd_weights_say_what_to_download(tmp_path):
    with pytest.raises(ModelUnavailableError, match=r"(?s)'vae' from .*empty.*sd_model=PATH"):
        load_stable_diffusion(tmp_path / "empty", torch.device("cpu"), torch.float32)


def test_missing_sam_checkpoint_and_unknown_type(tmp_path):
    with pytest.raises(ModelUnavailableError, match="nope.pth' does not exist"):
        load_sam("vit_b", tmp_path / "nope.pth", device="cpu")
    with pytest.raises(ValueError, match="SAM 'vit_x' is neither one of"):
        load_sam("vit_x", device="cpu")
    (tmp_path / "custom").mkdir()
    with pytest.raises(ModelUnavailableError, match="has no sam_config.json"):
        load_sam(tmp_path / "custom", device="cpu")


def test_sam_sources_are_read_once_for_loading_and_checking(tiny_models, tmp_path, monkeypatch):
    sam = tiny_models[1]
    assert sam_source(sam) == SamSource(None, Path(sam), Path(sam) / "sam.pth")
    assert sam_source("vit_b", tmp_path / "b.pth") == SamSource("vit_b", None, tmp_path / "b.pth")
    assert sam_source("vit_l") == SamSource("vit_l", None, None)  # Meta's checkpoint
    with pytest.raises(ValueError, match=r"SAM '.*absent' is neither one of \['vit_b'"):
        sam_source(tmp_path / "absent")

    assert missing_weights(tiny_models[0], sam) == []
    assert missing_weights(tiny_models[0], "vit_b", tmp_path / "b.pth") == [
        f"SAM checkpoint '{tmp_path / 'b.pth'}' does not exist"
    ]
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "sam_config.json").write_text("{}")
    assert missing_weights(tmp_path / "sd", tmp_path / "half") == [
        f"Stable Diffusion folder '{tmp_path / 'sd'}' lacks "
        "['vae', 'unet', 'tokenizer', 'text_encoder', 'scheduler']",
        f"SAM folder '{tmp_path / 'half'}' lacks ['sam.pth']",
    ]
    monkeypatch.setenv("DIFFUPROMPTER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(
        weights.SAM_CHECKPOINTS, "vit_b", ((tmp_path / "absent.pth").as_uri(), "0" * 64)
    )
    assert missing_weights(tiny_models[0], "vit_b") == [
        f"SAM 'vit_b' checkpoint is not in {tmp_path / 'cache'} and "
        f"{(tmp_path / 'absent.pth').as_uri()} cannot be reached"
    ]
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "absent.pth").write_bytes(b"cached")
    assert missing_weights(tiny_models[0], "vit_b") == []


def test_wrong_or_corrupt_sam_checkpoint_names_the_file(tiny_models, tmp_path):
    import json
    import shutil

    folder = shutil.copytree(tiny_models[1], tmp_path / "sam")
    arch = json.loads((folder / "sam_config.json").read_text())
    (folder / "sam_config.json").write_text(
        json.dumps({**arch, "decoder_depth": 1 + arch["decoder_depth"]})
    )
    with pytest.raises(
        ModelUnavailableError, match=r"sam.pth' does not fit this SAM architecture .*Missing key"
    ):
        load_sam(folder, device="cpu")
    (folder / "sam.pth").write_bytes(b"half a download")
    with pytest.raises(
        ModelUnavailableError, match=r"sam.pth' cannot be read .*download it again"
    ):
        load_sam(folder, device="cpu")


def _fake_release(tmp_path, monkeypatch, payload: bytes, sha: str):
    source = tmp_path / "sam_vit_b_01ec64.pth"
    source.write_bytes(payload)
    monkeypatch.setitem(weights.SAM_CHECKPOINTS, "vit_b", (source.as_uri(), sha))
    return tmp_path / "cache"


def test_sam_download_is_verified_and_cached(tmp_path, monkeypatch):
    payload = b"weights" * 1000
    cache = _fake_release(tmp_path, monkeypatch, payload, hashlib.sha256(payload).hexdigest())
    path = download_sam_checkpoint("vit_b", cache)
    assert path == cache / "sam_vit_b_01ec64.pth"
    assert path.read_bytes() == payload
    assert download_sam_checkpoint("vit_b", cache) == path  # cached: no second fetch
    assert list(cache.iterdir()) == [path]


def test_corrupt_sam_download_leaves_nothing(tmp_path, monkeypatch):
    cache = _fake_release(tmp_path, monkeypatch, b"truncated", "0" * 64)
    with pytest.raises(ModelUnavailableError, match="Checksum mismatch"):
        download_sam_checkpoint("vit_b", cache)
    assert list(cache.iterdir()) == []


def test_unreachable_sam_download_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setitem(
        weights.SAM_CHECKPOINTS, "vit_b", ((tmp_path / "absent.pth").as_uri(), "0" * 64)
    )
    with pytest.raises(ModelUnavailableError, match="(?s)Cannot download.*sam_checkpoint=PATH"):
        download_sam_checkpoint("vit_b", tmp_path / "cache")
