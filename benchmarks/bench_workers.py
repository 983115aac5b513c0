"""Samples per second of one run shared by 1, 2 and 4 ``fiftyone delegated
launch`` workers (``queue_pseudo_labels``): with a stub model that sleeps a
fixed time per sample, which shows the cost of claiming and writing, and
with the tiny random-weight models, which on this machine compete for CPU.

    .venv/bin/python benchmarks/bench_workers.py [--samples 48] [--seconds 0.25]

Two times per run: from its first worker operation's start to its last
one's end (workers are started, and have imported FiftyOne, beforehand),
and, with the stub, from its first sample's start to its last one's end,
which leaves out each worker's loading of the model (and torch).
Uses a throw-away database and dataset dir.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))  # the throw-away home, the stub and the worker launcher

from fiftyone_home import use_throwaway_home  # noqa: E402

HOME = use_throwaway_home(
    "diffuprompter-bench-",
    FIFTYONE_PLUGINS_DIR=str(TESTS.parent),
    FIFTYONE_SHOW_PROGRESS_BARS="false",
)

# isort: split

import fiftyone as fo  # noqa: E402
import numpy as np  # noqa: E402
from fiftyone.core.odm import get_db_conn  # noqa: E402
from helpers import WRITES, launch_workers, stop_workers, wait_terminal  # noqa: E402
from PIL import Image  # noqa: E402

from diffuprompter_plugin import queue_pseudo_labels  # noqa: E402
from diffuprompter_plugin.engine.tiny import write_tiny_models  # noqa: E402


def make_dataset(samples: int) -> fo.Dataset:
    folder = tempfile.mkdtemp(dir=HOME)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(samples):
        paths.append(os.path.join(folder, f"tile_{i:04d}.png"))
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
    dataset = fo.Dataset(persistent=True)
    dataset.add_samples([fo.Sample(filepath=p) for p in paths])
    return dataset


def run(workers: int, samples: int, env: dict[str, str], **queue_args) -> tuple[float, float]:
    """Samples/s of one queued run over ``workers`` launchers: from the first
    operation's start to the last one's end, and (stub model only) from the
    first sample's start to the last one's end, i.e. without loading models."""
    launched = launch_workers(workers, tempfile.mkdtemp(dir=HOME), **env)
    try:
        time.sleep(15)  # let the launchers import FiftyOne and start polling
        dataset = make_dataset(samples)
        queued = queue_pseudo_labels(dataset, "dp", workers, classes=["ship"], **queue_args)
        docs = wait_terminal([q.result["id"] for q in queued], timeout=1800)
    finally:
        stop_workers(launched)
    assert all(d.result.result["processed"] == samples for d in docs), docs[0].result
    seconds = max(d.completed_at for d in docs) - min(d.started_at for d in docs)
    times = get_db_conn()[WRITES].find({"_id": {"$in": dataset.values("filepath")}})
    spans = [(d["start"], d["end"]) for d in times]
    labelling = max(e for _, e in spans) - min(s for s, _ in spans) if spans else float("nan")
    return samples / seconds.total_seconds(), samples / labelling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=48, help="stub-model samples per run")
    parser.add_argument("--seconds", type=float, default=0.25, help="stub seconds per sample")
    parser.add_argument("--tiny-samples", type=int, default=16, help="tiny-model samples")
    args = parser.parse_args()

    stub = {"DIFFUPROMPTER_TEST_STUB": str(args.seconds)}
    print(f"stub model, {args.seconds} s/sample, {args.samples} samples, batch_size 4:")
    base = None
    for n in (1, 2, 4):
        rate, labelling = run(n, args.samples, stub, batch_size=4)
        base = base or (rate, labelling)
        print(
            f"  {n} worker(s): {rate:6.2f} samples/s ({rate / base[0]:.2f}x) operations; "
            f"{labelling:6.2f} samples/s ({labelling / base[1]:.2f}x) labelling",
            flush=True,
        )

    sd, sam = write_tiny_models(tempfile.mkdtemp(dir=HOME))
    tiny = dict(
        sd_model=str(sd),
        sam_model=str(sam),
        device="cpu",
        config={"loops": 4, "loop_batch_size": 2, "resolution": 64, "crf": False},
        smoke=True,
        batch_size=2,
    )
    print(f"tiny models on CPU ({os.cpu_count()} cores), {args.tiny_samples} samples:")
    for n in (1, 2):
        rate, _ = run(n, args.tiny_samples, {}, **tiny)
        print(f"  {n} worker(s): {rate:6.2f} samples/s", flush=True)


if __name__ == "__main__":
    main()
