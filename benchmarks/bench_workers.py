"""Samples per second of one run shared by 1, 2 and 4 ``fiftyone delegated
launch`` workers (``queue_pseudo_labels``): with a stub model that sleeps a
fixed time per sample, which shows the cost of claiming and writing, and
with the tiny random-weight models, which on this machine compete for CPU.

    .venv/bin/python benchmarks/bench_workers.py [--samples 64] [--seconds 0.5] [--repeat 3]

Two spans per run:

- **labelling**: from the first sample's start to the last sample's end,
  over all workers (stub only: the stub records when each sample starts
  and ends). It leaves out the workers' start-up, and shows what sharing
  costs: claims, saves, waits, and workers that end at different times.
- **operations**: from the first worker operation's ``started_at`` to the
  last one's ``completed_at``. The launchers are started, and have imported
  FiftyOne, beforehand; this span adds what each operation does before its
  first sample (importing the engine and torch, loading the model) and
  after its last (collecting and saving results), all on this machine's
  shared cores.

With the stub, each run's breakdown follows: ``pickup``, how far apart the
launchers started the operations; ``load``, from the first operation's
start to the first sample's; ``start`` and ``end``, how far apart the
workers' first samples start and their last samples end; ``after``, from
the last sample's end to the last operation's end (results); ``gap``, the
median/mean/max time from a sample's end to its worker's next start, up to
0.25 s (claiming, saving: the pool's cost per sample); ``idle``, all longer
gaps together (a worker waiting for samples).
Uses a throw-away database and dataset dir.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from throwaway import TESTS, use_throwaway_home

from diffuprompter_plugin.engine.tiny import write_tiny_models

if TYPE_CHECKING:
    import fiftyone as fo

IDLE_GAP_S = 0.25


@dataclass
class Timeline:
    """One queued run: its operations' ``(start, end)`` and each worker
    process's samples' ``(start, end)``, in seconds since the epoch."""

    samples: int
    operations: list[tuple[float, float]]
    workers: dict[int, list[tuple[float, float]]]

    def operations_rate(self) -> float:
        """Samples/s over the operations span."""
        return self.samples / (
            max(e for _, e in self.operations) - min(s for s, _ in self.operations)
        )

    def labelling_rate(self) -> float:
        """Samples/s over the labelling span (nan without sample times)."""
        spans = [span for samples in self.workers.values() for span in samples]
        if not spans:
            return float("nan")
        return self.samples / (max(e for _, e in spans) - min(s for s, _ in spans))

    def breakdown(self) -> str:
        """Where the time goes (see the module's docstring)."""
        starts = sorted(s for s, _ in self.operations)
        firsts = sorted(samples[0][0] for samples in self.workers.values())
        lasts = sorted(samples[-1][1] for samples in self.workers.values())
        gaps = [
            nxt[0] - prev[1]
            for samples in self.workers.values()
            for prev, nxt in itertools.pairwise(samples)
        ]
        busy = [gap for gap in gaps if gap <= IDLE_GAP_S] or [0.0]
        idle = sum(gap for gap in gaps if gap > IDLE_GAP_S)
        shares = sorted(len(s) for s in self.workers.values())
        return (
            f"pickup {starts[-1] - starts[0]:.2f} s, load {firsts[0] - starts[0]:.1f} s, "
            f"start {firsts[-1] - firsts[0]:.2f} s, end {lasts[-1] - lasts[0]:.2f} s, "
            f"after {max(e for _, e in self.operations) - lasts[-1]:.2f} s, "
            f"gap {_ms(statistics.median(busy))}/{_ms(statistics.mean(busy))}/{_ms(max(busy))} "
            f"ms, idle {idle:.1f} s, samples per worker {shares}"
        )


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f}"


def make_dataset(samples: int, home: str) -> fo.Dataset:
    import fiftyone as fo

    folder = tempfile.mkdtemp(dir=home)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(samples):
        paths.append(os.path.join(folder, f"tile_{i:04d}.png"))
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
    dataset = fo.Dataset(persistent=True)
    dataset.add_samples([fo.Sample(filepath=p) for p in paths])
    return dataset


def run(workers: int, samples: int, home: str, env: dict[str, str], **queue_args) -> Timeline:
    """The timeline of one run queued over ``workers`` fresh launchers."""
    from fiftyone.core.odm import get_db_conn
    from helpers import WRITES, launch_workers, stop_workers, wait_terminal

    from diffuprompter_plugin import queue_pseudo_labels

    launched = launch_workers(workers, tempfile.mkdtemp(dir=home), **env)
    try:
        time.sleep(15)  # let the launchers import FiftyOne and start polling
        dataset = make_dataset(samples, home)
        queued = queue_pseudo_labels(dataset, "dp", workers, classes=["ship"], **queue_args)
        docs = wait_terminal([q.result["id"] for q in queued], timeout=1800)
    finally:
        stop_workers(launched)
    assert all(d.result.result["processed"] == samples for d in docs), docs[0].result
    per_worker = defaultdict(list)
    for d in get_db_conn()[WRITES].find({"_id": {"$in": dataset.values("filepath")}}):
        per_worker[d["pid"]].append((d["start"], d["end"]))
    return Timeline(
        samples,
        [(d.started_at.timestamp(), d.completed_at.timestamp()) for d in docs],
        {pid: sorted(spans) for pid, spans in per_worker.items()},
    )


def spread(values: list[float]) -> str:
    """``median (min-max)`` of repeated figures."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64, help="stub-model samples per run")
    parser.add_argument("--seconds", type=float, default=0.5, help="stub seconds per sample")
    parser.add_argument("--repeat", type=int, default=3, help="runs per worker count")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--tiny-samples", type=int, default=16, help="tiny-model samples (0: none)"
    )
    args = parser.parse_args()
    home = use_throwaway_home(  # the plugin for the workers; the tests' stub and launcher
        FIFTYONE_PLUGINS_DIR=str(TESTS.parent), FIFTYONE_SHOW_PROGRESS_BARS="false"
    )

    sd, sam = write_tiny_models(tempfile.mkdtemp(dir=home))
    models = dict(sd_model=str(sd), sam_model=str(sam))  # on record; the stub replaces them
    stub = {"DIFFUPROMPTER_TEST_STUB": str(args.seconds)}
    print(
        f"stub model, {args.seconds} s/sample, {args.samples} samples, batch_size 4:", flush=True
    )
    rates: dict[int, tuple[list[float], list[float]]] = {}
    for n in args.workers:
        rates[n] = ([], [])
        for _ in range(args.repeat):
            timeline = run(n, args.samples, home, stub, batch_size=4, **models)
            rates[n][0].append(timeline.operations_rate())
            rates[n][1].append(timeline.labelling_rate())
            print(
                f"  {n} worker(s): operations {rates[n][0][-1]:.2f} samples/s, labelling "
                f"{rates[n][1][-1]:.2f} samples/s; {timeline.breakdown()}",
                flush=True,
            )
    base = [statistics.median(r) for r in rates[args.workers[0]]]
    print(f"median (min-max) of {args.repeat} runs; speed-up over {args.workers[0]} worker(s):")
    for n, (operations, labelling) in rates.items():
        print(
            f"  {n} worker(s): operations {spread(operations)} samples/s "
            f"({statistics.median(operations) / base[0]:.2f}x), labelling {spread(labelling)} "
            f"samples/s ({statistics.median(labelling) / base[1]:.2f}x); "
            f"ideal {n / args.seconds:.2f}",
            flush=True,
        )
    if not args.tiny_samples:
        return
    tiny = dict(
        **models,
        device="cpu",
        config={"loops": 4, "loop_batch_size": 2, "resolution": 64, "crf": False},
        smoke=True,
        batch_size=2,
    )
    print(f"tiny models on CPU ({os.cpu_count()} cores), {args.tiny_samples} samples:")
    for n in (1, 2):
        rate = run(n, args.tiny_samples, home, {}, **tiny).operations_rate()
        print(f"  {n} worker(s): operations {rate:6.2f} samples/s", flush=True)


if __name__ == "__main__":
    main()
