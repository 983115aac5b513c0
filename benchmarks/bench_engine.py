"""Engine speed and memory: tiny models on the CPU, full-size architectures
(SD v1.5 U-Net/VAE/CLIP-L + SAM ViT-H, random weights) on a GPU when present.

Rows: one image's heatmap and SAM+CRF stages, batched loops against one loop
per U-Net call; the compile warm-up, the bare U-Net and the heatmap stage's
ratio to it; heatmap cost per class for 1, 5 and 10 classes; CRF images/s by
worker count (512 px, L=1); the whole pipeline at L=50 in s per image·class
for 1 and 10 classes through ``annotate_all`` and a brain run, with the GPU
busy fraction.

    .venv/bin/python benchmarks/bench_engine.py [--full-cpu-loops 2]

Timing does not depend on weight values, so random weights give real figures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch
from memory import peak_rss_mib
from throwaway import use_throwaway_home

from diffuprompter_plugin import DiffuPrompter, DiffuPrompterConfig
from diffuprompter_plugin.engine.attention import compiles_unet
from diffuprompter_plugin.engine.tiny import clip_text_encoder, tiny_tokenizer, write_tiny_models

CLASSES = [
    "storage tank", "ship", "harbor", "airplane", "bridge",
    "vehicle", "tennis court", "baseball diamond", "roundabout", "helicopter",
]  # fmt: skip


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
        synchronize(model)
        mid = time.perf_counter()
        model.sam_prompter.segment(image, heatmaps)
        synchronize(model)
        heat_s.append(mid - start)
        total_s.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else peak_rss_mib() / 2**10
    return {
        "total_s": float(np.median(total_s)),
        "heatmap_s": float(np.median(heat_s)),
        "sam_crf_s": float(np.median(total_s) - np.median(heat_s)),
        "peak_gib": peak,
    }


def synchronize(model: DiffuPrompter) -> None:
    if model.grounder.device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, model: DiffuPrompter, repeats: int = 1) -> float:
    """Median seconds of ``step()`` (the GPU drained before and after)."""
    times = []
    for _ in range(repeats):
        synchronize(model)
        start = time.perf_counter()
        step()
        synchronize(model)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def images_512(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.random((512, 512, 3)) * 255).astype(np.uint8) for _ in range(count)]


class GpuBusy:
    """Fraction of wall time the GPU spends in the engine's stages, from CUDA
    events around every heatmap and SAM call of ``model`` (an upper bound:
    gaps inside a stage count as busy)."""

    def __init__(self, model: DiffuPrompter) -> None:
        self.model = model
        self.spans: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        for stage, name in ((model.grounder, "heatmaps"), (model.sam_prompter, "prompt")):
            setattr(stage, name, self._timed(getattr(stage, name)))

    def _timed(self, call):
        def wrapper(*args, **kwargs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                return call(*args, **kwargs)
            finally:
                end.record()
                self.spans.append((start, end))

        return wrapper

    def fraction(self, step) -> float:
        self.spans.clear()
        wall = timed(step, self.model)
        return sum(a.elapsed_time(b) for a, b in self.spans) / 1000 / wall


def model_for(sd, sam, device: str, **settings) -> DiffuPrompter:
    config = DiffuPrompterConfig(resolution=512, **settings)
    return DiffuPrompter.from_pretrained(sd, sam, device=device, config=config)


def unet_rows(label: str, model: DiffuPrompter, loops: int) -> None:
    """Compile warm-up, bare U-Net time at batch ``loops``, the heatmap stage
    and its ratio to the bare U-Net, and the heatmap cost per class for 1, 5
    and 10 classes sharing U-Net calls."""
    g = model.grounder
    image = images_512(1)[0]
    compiled = compiles_unet(model.config.compile_unet, g.device)
    first = timed(lambda: g.heatmaps(image, ["ship"]), model)
    heat = timed(lambda: g.heatmaps(image, ["ship"]), model, 3)
    warmup = f"{first - heat:.1f} s (first call)" if compiled else "n/a (not compiled)"
    print(f"{label}: compile warm-up {warmup}", flush=True)
    unet, store = g.sd.captured_unet.module(compiled)
    latent = g.encode(image).expand(loops, -1, -1, -1)
    embeds = g.embed_prompt("ship")[0].expand(loops, -1, -1)
    steps = torch.full((loops,), 40, device=g.device)

    def bare() -> None:
        with torch.inference_mode():
            unet(latent, steps, encoder_hidden_states=embeds)

    store.active = False
    bare()  # warm-up (a compiled U-Net traces its capture-free graph once)
    bare_s = timed(bare, model, 3)
    print(
        f"{label}: bare U-Net, batch {loops}: {bare_s * 1000:.1f} ms; heatmap stage "
        f"(L={loops}, 1 class) {heat * 1000:.1f} ms = {heat / bare_s:.2f}x the bare U-Net",
        flush=True,
    )
    for classes in (1, 5, 10):
        names = CLASSES[:classes]
        g.heatmaps(image, names)  # warm-up of this call pattern
        per_class = timed(lambda names=names: g.heatmaps(image, names), model, 2) / classes
        print(f"{label}: heatmaps of {classes:>2} classes: {per_class:.3f} s/class", flush=True)


def pool_start_s(workers: int, config: DiffuPrompterConfig) -> float:
    """Seconds to start a CRF pool of ``workers``, have each import the CRF
    and refine a tiny map, and shut the pool down: what each
    ``annotate_all`` stream (one per brain run and worker) pays once."""
    from diffuprompter_plugin.engine.crf import binary_map
    from diffuprompter_plugin.engine.crf_pool import crf_pool

    rgb, heatmap = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.float32)
    start = time.perf_counter()
    with crf_pool(workers) as pool:
        futures = [pool.submit(binary_map, rgb, heatmap, 0.4, config) for _ in range(workers)]
        [f.result() for f in futures]
    return time.perf_counter() - start


def crf_rows(label: str, model: DiffuPrompter, counts: list[int], images: int) -> None:
    """CRF-bound work: 512 px images, L=1, one class, grounded at a 64 px
    working size so that the U-Net's share is small; images/s of one
    ``annotate_all`` stream by CRF worker count (0: inline), with and
    without the pool's start, which a run pays once."""
    own = model.config
    stream = [(i, image, ["ship"]) for i, image in enumerate(images_512(images))]
    rates = {}
    for workers in counts:
        model.config = own.replace(
            loops=1, loop_batch_size=1, resolution=64, crf=True, crf_workers=workers
        )
        list(model.annotate_all(stream[:1]))  # warm-up
        seconds = timed(lambda: list(model.annotate_all(stream)), model)
        start = pool_start_s(workers, model.config) if workers else 0.0
        rates[workers] = images / (seconds - start)
        print(
            f"{label}: CRF, L=1, 64 px working size, {workers} workers, {images} images: "
            f"{images / seconds:.2f} images/s; {rates[workers]:.2f} images/s "
            f"({rates[workers] / rates[counts[0]]:.2f}x inline) past the pool's "
            f"start of {start:.2f} s",
            flush=True,
        )
    model.config = own


def crf_pool_rows(counts: list[int], images: int, config: DiffuPrompterConfig) -> None:
    """DenseCRF alone (Eq. 10 on 512 px images with a smooth heatmap), the
    work the pool takes off the models: images/s inline and through
    ``crf_pool`` by process count, so its scaling with cores shows apart
    from the models' own use of the CPU."""
    from diffuprompter_plugin.engine.crf import binary_map
    from diffuprompter_plugin.engine.crf_pool import crf_pool

    rgbs = images_512(images)
    yy, xx = np.mgrid[0:512, 0:512]
    heatmap = (np.exp(-((yy - 256) ** 2 + (xx - 200) ** 2) / 8000.0)).astype(np.float32)
    config = config.replace(crf=True)
    rates = {}
    for workers in counts:
        start = time.perf_counter()
        if workers == 0:
            for rgb in rgbs:
                binary_map(rgb, heatmap, config.threshold, config)
        else:
            with crf_pool(workers) as pool:
                list(pool.map(binary_map, [rgbs[0]], [heatmap], [config.threshold], [config]))
                start = time.perf_counter()  # pool processes started and warm
                n = len(rgbs)
                list(
                    pool.map(binary_map, rgbs, [heatmap] * n, [config.threshold] * n, [config] * n)
                )
        rates[workers] = images / (time.perf_counter() - start)
        print(
            f"DenseCRF alone, 512 px, {workers} workers: {rates[workers]:.2f} images/s "
            f"({rates[workers] / rates[counts[0]]:.2f}x inline)",
            flush=True,
        )


def pipeline_rows(label: str, model: DiffuPrompter, images: int, folder: str) -> None:
    """Seconds per image·class of the whole pipeline (CRF on, in the
    config's workers) for 1 and 10 classes, through ``annotate_all`` and
    through a brain run, and the GPU busy fraction over the run."""
    busy = GpuBusy(model) if model.grounder.device.type == "cuda" else None
    batch = images_512(images)
    list(model.annotate_all([(0, batch[0], CLASSES[:1])]))  # warm-up
    for classes in (1, 10):
        items = [(i, image, CLASSES[:classes]) for i, image in enumerate(batch)]

        def annotate_all(items=items) -> None:
            assert not any(isinstance(r, Exception) for _, r in model.annotate_all(items))

        stream = timed(annotate_all, model) / (images * classes)
        run = brain_run(model, batch, CLASSES[:classes], folder) / (images * classes)
        fraction = f"{busy.fraction(annotate_all):.0%}" if busy else "n/a (no CUDA)"
        print(
            f"{label}: whole pipeline, L={model.config.loops}, {classes:>2} classes, "
            f"{model.config.crf_workers} CRF workers: annotate_all {stream:.3f} s, "
            f"brain run {run:.3f} s per image·class; GPU busy {fraction}",
            flush=True,
        )


def brain_run(
    model: DiffuPrompter, images: list[np.ndarray], classes: list[str], folder: str
) -> float:
    """Seconds of ``compute_pseudo_labels`` over ``images`` saved as files in ``folder``."""
    import fiftyone as fo
    from PIL import Image

    from diffuprompter_plugin import compute_pseudo_labels

    dataset = fo.Dataset()
    paths = []
    for i, image in enumerate(images):
        paths.append(f"{folder}/bench_{i}.png")
        Image.fromarray(image).save(paths[-1])
    dataset.add_samples(fo.Sample(filepath=p) for p in paths)
    elapsed = timed(
        lambda: compute_pseudo_labels(
            dataset, "bench", classes=classes, model=model, progress=False
        ),
        model,
    )
    assert len(dataset.exists("dp_instances")) == len(images)
    dataset.delete()
    return elapsed


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
    parser.add_argument("--images", type=int, default=2, help="images per pipeline row")
    parser.add_argument("--crf-images", type=int, default=12, help="images per CRF row")
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
    home = use_throwaway_home()
    torch.manual_seed(0)
    cores = os.cpu_count() or 1
    print(
        f"torch {torch.__version__}, CUDA: {torch.cuda.is_available()}, "
        f"threads: {torch.get_num_threads()}, cores: {cores}"
    )
    counts = sorted({0, 1, 2, cores - 1} - {-1}) if cores > 2 else [0, 1, 2]
    with tempfile.TemporaryDirectory() as folder:
        sd, sam = (str(p) for p in write_tiny_models(folder))
        label = "tiny models, CPU"
        run(f"{label}, 64 px", sd, sam, "cpu", 64, 50, args.repeats, True)
        tiny = model_for(sd, sam, "cpu", loop_batch_size=50, crf_workers=min(2, cores))
        unet_rows(f"{label}, 512 px", tiny, 50)
        crf_pool_rows([0, 1, 2], args.crf_images, tiny.config)
        crf_rows(f"{label}, 512 px", tiny, [0, 1, 2], args.crf_images)
        pipeline_rows(f"{label}, 512 px", tiny, args.images, home)
    if torch.cuda.is_available():
        sd, sam = full_size_models()
        label = "SD1.5 + SAM ViT-H, GPU fp16, 512 px"
        run(label, sd, sam, "cuda", 512, 50, args.repeats, True)
        full = model_for(sd, sam, "cuda", loop_batch_size=50, crf_workers=cores - 1)
        unet_rows(label, full, 50)
        crf_pool_rows(counts, 4 * cores, full.config)
        crf_rows(label, full, counts, 4 * cores)
        pipeline_rows(label, full, 4 * args.images, home)
    else:
        print("full-size models on GPU: skipped (no CUDA device)")
    if args.full_cpu_loops:
        sd, sam = full_size_models()
        loops = args.full_cpu_loops
        batch = min(loops, args.full_cpu_batch)
        run("SD1.5 + SAM ViT-H, CPU fp32, 512 px", sd, sam, "cpu", 512, loops, 1, False, batch)


if __name__ == "__main__":
    main()
