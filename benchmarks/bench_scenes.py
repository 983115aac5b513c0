"""Memory and speed of large scenes labelled in tiles: tiny models on the CPU.

    .venv/bin/python benchmarks/bench_scenes.py [--big 20000] [--small 2000]

Writes two RGB tiled GeoTIFF scenes (smooth fields with bright squares) to a
temporary folder, labels each in its own process (so each peak is its own)
with the tiny models, CRF off, 1 loop, tile_size 1024, and prints the peak
RSS of both, their ratio (issue 12's bound: at most 1.5) and seconds per
megapixel.
"""

from __future__ import annotations

import argparse
import json
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


def label(path: str) -> None:
    """Labels one scene in this process and prints its figures as JSON."""
    from memory import peak_rss_mib

    from diffuprompter_plugin import DiffuPrompter, DiffuPrompterConfig
    from diffuprompter_plugin.engine.tiny import write_tiny_models

    config = DiffuPrompterConfig(loops=1, loop_batch_size=1, resolution=64, crf=False)
    sd, sam = write_tiny_models(Path(tempfile.mkdtemp()))
    model = DiffuPrompter.from_pretrained(sd, sam, device="cpu", config=config)
    start = time.perf_counter()
    result = model.annotate(path, ["car"])
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {"seconds": seconds, "rss_mib": peak_rss_mib(), "instances": len(result.instances)}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--big", type=int, default=20000)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.label:
        return label(args.label)
    folder = Path(tempfile.mkdtemp(prefix="bench-scenes-"))
    rows = {}
    for side in (args.small, args.big):
        path = folder / f"scene_{side}.tif"
        write_scene(path, side)
        out = subprocess.run(
            [sys.executable, __file__, "--label", str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows[side] = json.loads(out.stdout.strip().splitlines()[-1])
        path.unlink()
        mp = side * side / 1e6
        r = rows[side]
        print(
            f"{side} x {side} px: peak RSS {r['rss_mib']:.0f} MiB, {r['seconds']:.1f} s, "
            f"{r['seconds'] / mp:.2f} s/MP, {r['instances']} instances"
        )
    ratio = rows[args.big]["rss_mib"] / rows[args.small]["rss_mib"]
    print(f"peak RSS ratio {args.big} / {args.small}: {ratio:.2f} (bound: 1.5)")


if __name__ == "__main__":
    main()
