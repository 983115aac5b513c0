"""Large scenes labelled in tiles: speed with the CRF pool, where the time
goes, and memory.

    .venv/bin/python benchmarks/bench_scenes.py [--speed 4096] [--stream 4]
        [--repeat 3] [--small 2000] [--big 20000] [--workers 0 1 2] [--gpu-side 10000]

Writes RGB tiled GeoTIFF scenes (smooth fields with bright squares) to a
temporary folder and labels each in its own process (so each peak and CPU
time is its own), one class, DenseCRF on, default tiling (1,024-px tiles,
128 px overlap), with ``annotate`` (one stream: ``annotate_all``).

1. **Speed** on the ``--speed`` scene with the tiny models at the paper's
   working size (``resolution`` 512), L=1, torch on one thread: wall and CPU
   seconds per megapixel (CPU of the main process and its CRF workers)
   inline and with each ``--workers`` count (each run ``--repeat`` times,
   the counts in turn; the median run shown), each count's speed over
   inline's (issue 21's bound: at least 1.4 with 2 workers on 2 cores), and
   the share of wall time in each stage of the main process: grounding
   (SD), CRF (inline DenseCRF, or waiting for the pool), SAM, merge (seams),
   I/O (scene reads, heatmap GeoTIFF writes and reads, previews), other.
   Then the same pixels as ``--stream`` scenes in one stream, where the
   next scene's grounding overlaps the last one's DenseCRF and SAM.
2. **Memory** of the ``--small`` and ``--big`` scenes with a pool of 2 CRF
   workers (tiny models, ``resolution`` 64, one DenseCRF iteration: its
   memory does not depend on the iteration count, its time does): peak RSS of the main process
   and of the largest worker, and the ratio big / small of the main
   process's and of the whole (main + 2 workers) peak (bound: 1.5).
3. **GPU** (only where CUDA is present): the ``--gpu-side`` scene with
   full-size random-weight SD v1.5 + SAM ViT-H in fp16, L=50, ``cores - 1``
   CRF workers: seconds per megapixel per class and the GPU busy fraction
   (CUDA events around grounding and SAM over the wall time).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

BLOCK = 1024
STAGES = ("grounding", "CRF", "SAM", "merge", "I/O")


def write_scene(path: Path, side: int) -> None:
    """A side x side RGB GeoTIFF written block row by block row."""
    import rasterio
    from rasterio.windows import Window

    profile = dict(
        driver="GTiff", width=side, height=side, count=3, dtype="uint8",
        tiled=True, blockxsize=512, blockysize=512, compress="deflate",
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, side, BLOCK):
            rows = min(BLOCK, side - y)
            yy, xx = np.mgrid[y : y + rows, 0:side]
            band = ((xx // 7 + yy // 5) % 64 + 40).astype(np.uint8)
            band[(yy % 300 < 24) & (xx % 300 < 24)] = 230  # 24-px objects
            dst.write(np.stack([band, band // 2, band // 3]), window=Window(0, y, side, rows))


class Stages:
    """Wall seconds of the main thread in each stage, from wrappers around
    the engine's calls (calls from other threads are not counted)."""

    def __init__(self, cuda: bool) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cuda = cuda
        self.gpu_spans: list = []
        self.grounded_cpu = 0.0  # the main process's CPU seconds when DenseCRF starts

    def wrap(self, owner, name: str, stage: str, gpu: bool = False, force: bool = False) -> None:
        call = getattr(owner, name)

        def timed(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                return call(*args, **kwargs)
            span = self._gpu_span() if gpu else None
            start = time.perf_counter()
            try:
                out = call(*args, **kwargs)
                return list(out) if force else out  # a generator's work happens here
            finally:
                if span:
                    span[1].record()
                    self.gpu_spans.append(span)
                self.seconds[stage] += time.perf_counter() - start

        setattr(owner, name, timed)

    def _gpu_span(self):
        if not self.cuda:
            return None
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        return start, end

    def gpu_seconds(self) -> float:
        return sum(a.elapsed_time(b) for a, b in self.gpu_spans) / 1000


def instrument(model, stages: Stages) -> None:
    """Times the stages of ``model``'s stream (see :class:`Stages`)."""
    from diffuprompter_plugin.engine import pipeline, raster, scenes
    from diffuprompter_plugin.engine.heatmap_store import HeatmapWriter

    stages.wrap(model.grounder, "tile_heatmaps", "grounding", gpu=True, force=True)
    submit = pipeline.DiffuPrompter._submit_crf

    def first_submit(*args, **kwargs):  # the scene is grounded: DenseCRF starts
        stages.grounded_cpu = stages.grounded_cpu or time.process_time()
        return submit(*args, **kwargs)

    pipeline.DiffuPrompter._submit_crf = first_submit
    stages.wrap(pipeline.DiffuPrompter, "_submit_crf", "CRF")
    stages.wrap(concurrent.futures.Future, "result", "CRF")  # waiting for the pool
    stages.wrap(pipeline, "tile_instances", "SAM", gpu=True)
    stages.wrap(pipeline, "merge_instances", "merge")
    stages.wrap(raster.FileRaster, "read", "I/O")
    stages.wrap(HeatmapWriter, "write", "I/O")
    stages.wrap(HeatmapWriter, "close", "I/O")
    stages.wrap(scenes, "read_heatmap_window", "I/O")
    stages.wrap(scenes, "heatmap_preview", "I/O")


def cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds of this process and of its reaped children
    (the CRF workers, once their pool is shut down)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def label(args: argparse.Namespace) -> None:
    """Labels one scene in this process and prints its figures as JSON."""
    import torch
    from memory import peak_rss_mib

    from diffuprompter_plugin import DiffuPrompter, DiffuPrompterConfig
    from diffuprompter_plugin.engine.tiny import write_tiny_models

    gpu = args.models == "full"
    settings = dict(
        resolution=args.resolution,
        crf=True,
        crf_workers=args.crf_workers,
        crf_iterations=args.crf_iterations,
    )
    if gpu:
        from bench_engine import full_size_models

        sd, sam = full_size_models()
        config = DiffuPrompterConfig(loops=50, **settings)
        model = DiffuPrompter.from_pretrained(
            sd, sam, device="cuda", config=config, dtype=torch.float16
        )
        model.annotate(np.full((512, 512, 3), 128, np.uint8), ["car"])  # compile warm-up
    else:
        torch.set_num_threads(1)
        sd, sam = write_tiny_models(Path(tempfile.mkdtemp()))
        config = DiffuPrompterConfig(loops=1, loop_batch_size=16, **settings)
        model = DiffuPrompter.from_pretrained(sd, sam, device="cpu", config=config)
    stages = Stages(cuda=gpu)
    instrument(model, stages)
    import diffuprompter_plugin

    assert diffuprompter_plugin.__file__.startswith(str(Path(__file__).resolve().parents[1]))
    start, cpu = time.perf_counter(), cpu_seconds()
    stages.grounded_cpu = 0.0
    instances = 0
    for _, result in model.annotate_all([(k, args.label, ["car"]) for k in range(args.scenes)]):
        instances += len(result.instances)
        result.discard()  # its heatmap files: a 20,000² scene's take 1.5 GB
    seconds, (main_cpu, workers_cpu) = time.perf_counter() - start, cpu_seconds()
    worker_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**10
    figures = {
        "seconds": seconds,
        "cpu_seconds": main_cpu + workers_cpu - sum(cpu),
        "main_cpu_seconds": main_cpu - cpu[0],
        "workers_cpu_seconds": workers_cpu - cpu[1],
        "grounded_cpu_seconds": stages.grounded_cpu - cpu[0],
        "rss_mib": peak_rss_mib(),
        "worker_rss_mib": worker_rss if args.crf_workers else 0.0,
        "instances": instances,
        "stages": dict(stages.seconds),
        "gpu_busy": stages.gpu_seconds() / seconds if gpu else None,
    }
    print(json.dumps(figures))


def labelled(
    path: Path,
    workers: int,
    resolution: int,
    models: str = "tiny",
    iterations: int = 5,
    scenes: int = 1,
) -> dict:
    """Labels the scene ``path`` in a new process, torch and the CRF
    workers on one thread each; returns its figures."""
    command = [sys.executable, __file__, "--label", str(path), "--crf-workers", str(workers)]
    command += ["--resolution", str(resolution), "--models", models]
    command += ["--crf-iterations", str(iterations), "--scenes", str(scenes)]
    root = str(Path(__file__).resolve().parents[1])  # this checkout's library
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if models == "full":
        env.pop("OMP_NUM_THREADS"), env.pop("MKL_NUM_THREADS")
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def shares(r: dict) -> str:
    """The share of wall time in each stage."""
    parts = {stage: r["stages"].get(stage, 0.0) for stage in STAGES}
    parts["other"] = max(0.0, r["seconds"] - sum(parts.values()))
    return ", ".join(f"{stage} {s / r['seconds']:.0%}" for stage, s in parts.items())


def speed_rows(
    folder: Path, side: int, counts: list[int], scenes: int = 1, repeat: int = 1
) -> None:
    """The speed rows of ``scenes`` scenes of ``side`` x ``side`` px in one
    stream: each worker count run ``repeat`` times, the counts in turn (so
    a change in the machine's load falls on all of them), medians shown."""
    path = folder / f"scene_{side}.tif"
    write_scene(path, side)
    mp = scenes * side * side / 1e6
    what = f"{side} x {side} px" if scenes == 1 else f"a stream of {scenes} scenes of {side}²"
    print(f"Speed: {what} ({mp:.1f} MP), tiny models at resolution 512, L=1, 1 class")
    runs: dict[int, list[dict]] = defaultdict(list)
    for _ in range(repeat):
        for workers in counts:
            runs[workers].append(labelled(path, workers, 512, scenes=scenes))
    walls, bound = {}, {}
    for workers in counts:
        r = sorted(runs[workers], key=lambda run: run["seconds"])[
            len(runs[workers]) // 2
        ]  # median
        walls[workers] = [run["seconds"] for run in runs[workers]]
        # the wall time on this machine's cores were they idle: the main process
        # alone until the first scene is grounded; then it, the workers' time
        # shared among them, or both shared among the cores, whichever is
        # longest (contention inflates wall time, much less CPU time)
        before = r["grounded_cpu_seconds"]
        after, crf = r["main_cpu_seconds"] - before, r["workers_cpu_seconds"]
        cores = os.cpu_count() or 1
        bound[workers] = before + max(after, crf / max(1, workers), (after + crf) / cores)
        name = "inline" if workers == 0 else f"{workers} CRF worker{'s' * (workers > 1)}"
        print(
            f"  {name}: {r['seconds'] / mp:.2f} s/MP wall ({r['seconds']:.1f} s), "
            f"{r['cpu_seconds'] / mp:.2f} CPU s/MP (main {r['main_cpu_seconds'] / mp:.2f}, "
            f"workers {r['workers_cpu_seconds'] / mp:.2f}), "
            f"{r['instances']} instances; {shares(r)}",
            flush=True,
        )
    if 0 in walls:
        for workers in (w for w in counts if w):
            paired = [a / b for a, b in zip(walls[0], walls[workers], strict=True)]
            speed = np.median(walls[0]) / np.median(walls[workers])
            print(
                f"  {workers} CRF worker(s): {speed:.2f}x "
                f"inline (median wall; each turn {', '.join(f'{x:.2f}' for x in paired)}); "
                f"{bound[0] / bound[workers]:.2f}x on {os.cpu_count()} idle cores (from CPU "
                "times: the main process until the first scene is grounded, then the "
                "longest of it, the workers and both over the cores)"
            )
    print(f"  load average during the rows: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    path.unlink()


def memory_rows(folder: Path, small: int, big: int) -> None:
    print(
        "Memory: tiny models at resolution 64, L=1, 1 class, DenseCRF (1 iteration) in 2 workers"
    )
    peaks = {}
    for side in (small, big):
        path = folder / f"scene_{side}.tif"
        write_scene(path, side)
        r = labelled(path, 2, 64, iterations=1)
        path.unlink()
        peaks[side] = (r["rss_mib"], r["rss_mib"] + 2 * r["worker_rss_mib"])
        mp = side * side / 1e6
        print(
            f"  {side} x {side} px: peak RSS {r['rss_mib']:.0f} MiB main, "
            f"{r['worker_rss_mib']:.0f} MiB the largest worker; {r['seconds'] / mp:.2f} s/MP "
            f"({r['seconds']:.0f} s), {r['instances']} instances; {shares(r)}",
            flush=True,
        )
    main, whole = (peaks[big][k] / peaks[small][k] for k in (0, 1))
    print(f"  peak RSS {big} / {small}: main {main:.2f}, main + 2 workers {whole:.2f} (bound 1.5)")


def gpu_rows(folder: Path, side: int) -> None:
    import torch

    if not torch.cuda.is_available():
        print("GPU: no CUDA device here; the GPU rows were not run")
        return
    path = folder / f"scene_{side}.tif"
    write_scene(path, side)
    workers = max(1, (os.cpu_count() or 2) - 1)
    r = labelled(path, workers, 512, models="full")
    mp = side * side / 1e6
    print(
        f"GPU ({torch.cuda.get_device_name()}): {side} x {side} px, SD v1.5 + SAM ViT-H "
        f"(random weights, fp16), L=50, one class, {workers} CRF workers: "
        f"{r['seconds'] / mp:.2f} s/MP/class ({r['seconds']:.0f} s), GPU busy "
        f"{r['gpu_busy']:.0%}; {shares(r)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--speed", type=int, default=4096, help="0: no speed rows")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--stream", type=int, default=4, help="then as this many smaller scenes (0: not)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each worker count (medians shown)"
    )
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--big", type=int, default=20000, help="0: no memory rows")
    parser.add_argument("--gpu-side", type=int, default=10000, help="0: no GPU rows")
    parser.add_argument("--label", help=argparse.SUPPRESS)
    parser.add_argument("--crf-workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=int, default=512, help=argparse.SUPPRESS)
    parser.add_argument("--crf-iterations", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--scenes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--models", default="tiny", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.label:
        return label(args)
    with tempfile.TemporaryDirectory(prefix="bench-scenes-") as folder:
        if args.speed:
            speed_rows(Path(folder), args.speed, args.workers, repeat=args.repeat)
            if args.stream > 1:  # about the same pixels, as scenes of one stream
                side = round(args.speed / args.stream**0.5)
                speed_rows(Path(folder), side, args.workers, args.stream, args.repeat)
        if args.big:
            memory_rows(Path(folder), args.small, args.big)
        if args.gpu_side:
            gpu_rows(Path(folder), args.gpu_side)


if __name__ == "__main__":
    main()
