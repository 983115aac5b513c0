"""Samples per second of the FiftyOne layer alone (engine replaced by a stub
that returns fixed heatmaps and instances), and the process's peak memory.

    .venv/bin/python benchmarks/bench_fiftyone.py [--samples 10000]

Uses a throw-away database and dataset dir.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from memory import peak_rss_mib
from PIL import Image
from throwaway import use_throwaway_home

from diffuprompter_plugin import DiffuPrompterConfig
from diffuprompter_plugin.engine.pipeline import Annotation, Annotator
from diffuprompter_plugin.engine.segmentation import Instance

SIZE = 64


class StubModel(Annotator):
    """Returns a fixed 64 x 64 heatmap and three instances per class."""

    config = DiffuPrompterConfig()

    def __init__(self) -> None:
        self.heatmap = np.random.default_rng(0).random((SIZE, SIZE)).astype(np.float32)
        self.masks = []
        for k in range(3):
            mask = np.zeros((SIZE, SIZE), bool)
            mask[k * 20 : k * 20 + 12, 4:20] = True
            self.masks.append(mask)

    def annotate(self, image, class_names, thresholds=None):
        instances = [Instance.from_full_mask(n, m, 0.5) for n in class_names for m in self.masks]
        return Annotation({n: self.heatmap for n in class_names}, instances)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    home = use_throwaway_home()
    import fiftyone as fo

    from diffuprompter_plugin import compute_pseudo_labels

    image = f"{home}/scene.png"
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(image)
    dataset = fo.Dataset("bench", persistent=True)
    dataset.add_samples(
        fo.Sample(filepath=image, ground_truth=fo.Classification(label="ship"))
        for _ in range(args.samples)
    )
    start = time.perf_counter()
    results = compute_pseudo_labels(
        dataset,
        "bench",
        class_field="ground_truth",
        model=StubModel(),
        batch_size=args.batch_size,
        progress=False,
    )
    elapsed = time.perf_counter() - start
    peak = peak_rss_mib()
    print(
        f"{results.processed} samples, {results.instances} instances, "
        f"batch {args.batch_size}: {elapsed:.1f} s, "
        f"{results.processed / elapsed:.1f} samples/s, peak RSS {peak:.0f} MiB"
    )
    dataset.delete()


if __name__ == "__main__":
    main()
