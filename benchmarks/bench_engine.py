"""Engine speed and memory: tiny models on the CPU, full-size architectures
(SD v1.5 U-Net/VAE/CLIP-L + SAM ViT-H, random weights) on a GPU when present,
and the speed-up of batched loops over one loop per U-Net call.

    .venv/bin/python benchmarks/bench_engine.py [--full-cpu-loops 2]

Timing does not depend on weight values, so random weights give real figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch
from memory import peak_rss_mib

from diffuprompter_plugin import DiffuPrompter, DiffuPrompterConfig
from diffuprompter_plugin.engine.tiny import clip_text_encoder, tiny_tokenizer, write_tiny_models


def full_size_models() -> tuple[SimpleNamespace, object]:
    """SD v1.5-shaped VAE, U-Net and CLIP-L text encoder, and SAM ViT-H."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from segment_anything import sam_model_registry

    tokenizer = tiny_tokenizer()
    sd = SimpleNamespace(
        unet=UNet2DConditionModel(cross_attention_dim=768, sample_size=64),
        vae=AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        ),
        text_encoder=clip_text_encoder(tokenizer, hidden_size=768, layers=12, heads=12),
        tokenizer=tokenizer,
        scheduler=DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    )
    return sd, sam_model_registry["vit_h"]()


def measure(model: DiffuPrompter, image: np.ndarray, repeats: int) -> dict[str, float]:
    """Seconds per image (one class) split into heatmap and SAM stages."""
    cuda = model.grounder.device.type == "cuda"
    model.annotate(image, ["storage tank"])  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    heat_s, total_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        heatmaps = model.grounder.heatmaps(image, ["storage tank"])
        if cuda:
            torch.cuda.synchronize()
        mid = time.perf_counter()
        model.prompter.segment(image, heatmaps)
        if cuda:
            torch.cuda.synchronize()
        heat_s.append(mid - start)
        total_s.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else peak_rss_mib() / 2**10
    return {
        "total_s": float(np.median(total_s)),
        "heatmap_s": float(np.median(heat_s)),
        "sam_crf_s": float(np.median(total_s) - np.median(heat_s)),
        "peak_gib": peak,
    }


def measure_stream(model: DiffuPrompter, images: list[np.ndarray], workers: int) -> float:
    """Seconds per image of ``annotate_all`` with DenseCRF on, in ``workers``
    processes beside the models (0: inline)."""
    model.config = model.config.replace(crf=True, crf_workers=workers)
    items = [(i, image, ["storage tank"]) for i, image in enumerate(images)]
    list(model.annotate_all(items[:2]))  # warm-up (and worker start-up)
    start = time.perf_counter()
    results = list(model.annotate_all(items))
    assert not any(isinstance(r, Exception) for _, r in results)
    return (time.perf_counter() - start) / len(images)


def stream(label: str, sd, sam, device: str, loops: int, workers: int) -> None:
    """Prints seconds per 512 px image of ``annotate_all``, CRF inline and in
    ``workers`` processes."""
    config = DiffuPrompterConfig(loops=loops, loop_batch_size=loops, resolution=512)
    model = DiffuPrompter.from_pretrained(sd, sam, device=device, config=config)
    rng = np.random.default_rng(0)
    images = [(rng.random((512, 512, 3)) * 255).astype(np.uint8) for _ in range(8)]
    inline, pooled = measure_stream(model, images, 0), measure_stream(model, images, workers)
    print(
        f"{label}, L={loops}, CRF on: {inline:.3f} s/img inline, "
        f"{pooled:.3f} s/img with {workers} CRF workers ({inline / pooled:.2f}x)",
        flush=True,
    )


def row(name: str, figures: dict[str, float]) -> str:
    return (
        f"{name:<46} {figures['total_s']:>8.3f} s/img  heatmap {figures['heatmap_s']:.3f} s"
        f"  SAM+CRF {figures['sam_crf_s']:.3f} s  peak {figures['peak_gib']:.2f} GiB"
    )


def run(
    label: str,
    sd,
    sam,
    device: str,
    size: int,
    loops: int,
    repeats: int,
    baseline: bool,
    batch: int | None = None,
) -> None:
    """Prints one image's row with ``batch`` loops per U-Net call (default
    all), and with ``baseline`` the one-loop-per-call row and the speed-up."""
    batch = batch or loops
    image = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
    config = DiffuPrompterConfig(loops=loops, loop_batch_size=batch, resolution=size)
    model = DiffuPrompter.from_pretrained(sd, sam, device=device, config=config)
    batched = measure(model, image, repeats)
    print(row(f"{label}, L={loops}, batch {batch}", batched), flush=True)
    if baseline:
        model.config = config.replace(loop_batch_size=1)
        single = measure(model, image, repeats)
        print(row(f"{label}, L={loops}, one loop per call", single), flush=True)
        speedup = single["heatmap_s"] / batched["heatmap_s"]
        print(f"{'':<46} batched loops speed-up: {speedup:.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--full-cpu-loops",
        type=int,
        default=0,
        help="also time full-size models on the CPU with this many loops (slow)",
    )
    parser.add_argument(
        "--full-cpu-batch",
        type=int,
        default=5,
        help="loops per U-Net call in that CPU run (memory grows with it)",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, CUDA: {torch.cuda.is_available()}, "
        f"threads: {torch.get_num_threads()}"
    )
    with tempfile.TemporaryDirectory() as folder:
        sd, sam = write_tiny_models(folder)
        run("tiny models, CPU, 64 px", str(sd), str(sam), "cpu", 64, 50, args.repeats, True)
        stream("tiny models, CPU, 512 px", str(sd), str(sam), "cpu", 4, 2)
    if torch.cuda.is_available():
        sd, sam = full_size_models()
        run("SD1.5 + SAM ViT-H, GPU fp16, 512 px", sd, sam, "cuda", 512, 50, args.repeats, True)
        stream("SD1.5 + SAM ViT-H, GPU fp16, 512 px", sd, sam, "cuda", 50, 4)
    else:
        print("full-size models on GPU: skipped (no CUDA device)")
    if args.full_cpu_loops:
        sd, sam = full_size_models()
        loops = args.full_cpu_loops
        batch = min(loops, args.full_cpu_batch)
        run("SD1.5 + SAM ViT-H, CPU fp32, 512 px", sd, sam, "cpu", 512, loops, 1, False, batch)


if __name__ == "__main__":
    main()
