"""Import throughput of a scene-classification collection (NWPU-RESISC45 layout,
256 x 256 JPEGs), and the process's peak memory.

    .venv/bin/python benchmarks/bench_import.py [--images 31500]

Uses a throw-away database, dataset dir and image folder.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from memory import peak_rss_mib
from PIL import Image
from throwaway import use_throwaway_home

CLASSES = ("airplane", "ship", "storage_tank", "harbor", "bridge", "forest", "beach")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=3500)
    args = parser.parse_args()
    home = use_throwaway_home()
    import fiftyone as fo

    from diffuprompter_plugin.importers import import_classification_collection

    root = os.path.join(home, "NWPU-RESISC45")
    tile = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8))
    for i in range(args.images):
        folder = os.path.join(root, CLASSES[i % len(CLASSES)])
        os.makedirs(folder, exist_ok=True)
        tile.save(os.path.join(folder, f"{CLASSES[i % len(CLASSES)]}_{i:05d}.jpg"))
    start = time.perf_counter()
    report = import_classification_collection(root, "bench", progress=False)
    elapsed = time.perf_counter() - start
    peak = peak_rss_mib()
    print(
        f"{args.images} files scanned, {report.added} imported "
        f"({len(CLASSES) - 2} of {len(CLASSES)} classes map): {elapsed:.1f} s, "
        f"{args.images / elapsed:.0f} files/s, peak RSS {peak:.0f} MiB"
    )
    fo.delete_dataset("bench")


if __name__ == "__main__":
    main()
