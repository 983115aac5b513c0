"""Memory and speed of large scenes labelled in tiles: tiny models on the CPU.

    .venv/bin/python benchmarks/bench_scenes.py [--big 20000] [--small 2000]
        [--speed 4096] [--loop-batch-size 16]

Writes RGB tiled GeoTIFF scenes (smooth fields with bright squares) to a
temporary folder and labels each in its own process (so each peak is its
own) with the tiny models, CRF off, 1 loop, 1 class, tile_size 1024.

Prints the peak RSS of the small and the big scene, their ratio (issue 12's
bound: at most 1.5) and seconds per megapixel, tiles grounded in groups of
``--loop-batch-size``; then, on the ``--speed`` scene, the U-Net calls and
seconds per megapixel with one tile per U-Net call (loop_batch_size 1, as
tiles were grounded before they were batched) and with the groups, on one
thread, so that their CPU seconds compare on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BLOCK = 1024


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


def label(path: str, loop_batch_size: int) -> None:
    """Labels one scene in this process and prints its figures as JSON."""
    from memory import peak_rss_mib

    from diffuprompter_plugin import DiffuPrompter, DiffuPrompterConfig
    from diffuprompter_plugin.engine.tiny import write_tiny_models

    config = DiffuPrompterConfig(
        loops=1, loop_batch_size=loop_batch_size, resolution=64, crf=False
    )
    sd, sam = write_tiny_models(Path(tempfile.mkdtemp()))
    model = DiffuPrompter.from_pretrained(sd, sam, device="cpu", config=config)
    calls = []
    model.grounder.sd.unet.register_forward_hook(lambda *_: calls.append(1))
    start, cpu = time.perf_counter(), time.process_time()
    result = model.annotate(path, ["car"])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    figures = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "rss_mib": peak_rss_mib(),
        "instances": len(result.instances),
        "unet_calls": len(calls),
    }
    print(json.dumps(figures))


def labelled(path: Path, side: int, loop_batch_size: int, env: dict | None = None) -> dict:
    """Labels the side x side scene ``path`` in a new process (with ``env``
    added to its environment); prints and returns its figures."""
    command = [sys.executable, __file__, "--label", str(path)]
    command += ["--loop-batch-size", str(loop_batch_size)]
    env = {**os.environ, **(env or {})}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    mp = side * side / 1e6
    print(
        f"{side} x {side} px, loop_batch_size {loop_batch_size}: peak RSS "
        f"{r['rss_mib']:.0f} MiB, {r['unet_calls']} U-Net calls, {r['seconds']:.1f} s, "
        f"{r['seconds'] / mp:.2f} s/MP ({r['cpu_seconds'] / mp:.2f} CPU s/MP), "
        f"{r['instances']} instances",
        flush=True,
    )
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--big", type=int, default=20000)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--speed", type=int, default=4096, help="0: no speed rows")
    parser.add_argument("--loop-batch-size", type=int, default=16)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.label:
        return label(args.label, args.loop_batch_size)
    with tempfile.TemporaryDirectory(prefix="bench-scenes-") as folder:
        rss = {}
        for side in (args.small, args.big):
            path = Path(folder) / f"scene_{side}.tif"
            write_scene(path, side)
            rss[side] = labelled(path, side, args.loop_batch_size)["rss_mib"]
            path.unlink()
        ratio = rss[args.big] / rss[args.small]
        print(f"peak RSS ratio {args.big} / {args.small}: {ratio:.2f} (bound: 1.5)", flush=True)
        if args.speed:
            path = Path(folder) / f"scene_{args.speed}.tif"
            write_scene(path, args.speed)
            one_thread = {"OMP_NUM_THREADS": "1"}  # CPU seconds that contention does not inflate
            alone = labelled(path, args.speed, 1, one_thread)["cpu_seconds"]
            grouped = labelled(path, args.speed, args.loop_batch_size, one_thread)["cpu_seconds"]
            print(f"tiles in groups: {alone / grouped:.2f}x the CPU speed of one tile per call")


if __name__ == "__main__":
    main()
