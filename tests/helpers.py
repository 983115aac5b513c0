"""Test helpers importable from every test module (pytest pythonpath)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from diffuprompter_plugin.engine.config import DiffuPrompterConfig
from diffuprompter_plugin.engine.pipeline import Annotator
from diffuprompter_plugin.engine.segmentation import Candidates, SamPrompter

TINY_CONFIG = DiffuPrompterConfig(loops=4, loop_batch_size=2, resolution=64, crf=False)
"""Settings for the tiny models: 64 px working size, 4 loops, no CRF."""


class StubModel(Annotator):
    """Engine stand-in for FiftyOne-layer tests: reads the image like the
    engine does, returns a ramp heatmap and one 8 x 8 instance per class."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.config = DiffuPrompterConfig()
        self.calls: list[str] = []
        self.crf_workers_seen: set[int] = set()
        self.fail_after = fail_after
        self.streams = 0

    def annotate_all(self, items, thresholds=None):
        self.streams += 1  # a DiffuPrompter's CRF pool lives as long as one stream
        yield from super().annotate_all(items, thresholds)

    def annotate(self, image, class_names, thresholds=None):
        from diffuprompter_plugin.engine.image import to_rgb_uint8
        from diffuprompter_plugin.engine.pipeline import Annotation
        from diffuprompter_plugin.engine.segmentation import Instance

        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("worker killed")
        self.calls.append(str(image))
        self.crf_workers_seen.add(self.config.crf_workers)
        height, width = to_rgb_uint8(image).shape[:2]
        ramp = np.linspace(0, 1, height * width, dtype=np.float32).reshape(height, width)
        instances = []
        for k, name in enumerate(class_names):
            mask = np.zeros((height, width), bool)
            mask[k * 8 : k * 8 + 8, 0:8] = True
            instances.append(Instance.from_full_mask(name, mask, 0.5))
        return Annotation({n: ramp for n in class_names}, instances)


class EchoPrompter(SamPrompter):
    """SAM replaced by an oracle that returns each region's own mask."""

    def __init__(self, config):
        self.config = config
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.predictor = type("P", (), {"set_image": lambda self, rgb: None})()
        self.predictor.transform = ResizeLongestSide(1024)

    def predict(self, found):
        """Each region's own mask, predicted IoU 0.8, region IoU and stability 1."""
        ones = np.ones(len(found), np.float32)
        return Candidates(np.stack([r.mask for r in found]), 0.8 * ones, ones, ones)


WRITES = "diffuprompter_test_annotations"
"""Collection counting :class:`SlowStubModel` annotations per image path."""


class SlowStubModel(StubModel):
    """A :class:`StubModel` taking ``seconds`` per sample that counts each
    finished annotation in the database (``WRITES``), atomically, so that a
    test sees every sample any worker process labelled, and how often (and
    by which process, from when to when).
    With ``hang_after``, it hangs on the next sample after that many."""

    def __init__(self, seconds: float, hang_after: int | None = None) -> None:
        super().__init__()
        self.seconds = seconds
        self.hang_after = hang_after

    def annotate(self, image, class_names, thresholds=None):
        import time

        from fiftyone.core.odm import get_db_conn

        if self.hang_after is not None and len(self.calls) >= self.hang_after:
            get_db_conn()[WRITES].insert_one({"hung": os.getpid()})
            time.sleep(3600)
        start = time.time()
        time.sleep(self.seconds)
        result = super().annotate(image, class_names, thresholds)
        get_db_conn()[WRITES].update_one(
            {"_id": str(image)},
            {"$inc": {"n": 1}, "$set": {"pid": os.getpid(), "start": start, "end": time.time()}},
            upsert=True,
        )
        return result


def annotation_counts(paths) -> dict[str, int]:
    """``{image path: annotations counted by SlowStubModel}`` for ``paths``."""
    from fiftyone.core.odm import get_db_conn

    found = get_db_conn()[WRITES].find({"_id": {"$in": list(paths)}})
    return {**dict.fromkeys(paths, 0), **{d["_id"]: d["n"] for d in found}}


def launch_workers(n: int, log_dir, **env: str) -> list[subprocess.Popen]:
    """Starts ``n`` ``fiftyone delegated launch`` processes (each the leader
    of its own process group) with ``env`` added to this environment and the
    stub hook of tests/worker_site on their PYTHONPATH."""
    site = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker_site")
    path = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)
    cli = Path(sys.executable).with_name("fiftyone")
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    workers = []
    for i in range(n):
        with open(Path(log_dir) / f"worker{i}.log", "w") as log:
            workers.append(
                subprocess.Popen(
                    [str(cli), "delegated", "launch"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONPATH": path, **env},
                    start_new_session=True,
                )
            )
    return workers


def stop_workers(workers: list[subprocess.Popen]) -> None:
    """Ends the process groups of ``workers`` (already dead ones too)."""
    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)


def wait_terminal(ids, timeout: float) -> list:
    """The delegated operations ``ids`` once all completed or failed."""
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionRunState

    service = DelegatedOperationService()
    deadline = time.time() + timeout
    while time.time() < deadline:
        docs = [service.get(i) for i in ids]
        if all(
            d.run_state in (ExecutionRunState.COMPLETED, ExecutionRunState.FAILED) for d in docs
        ):
            return docs
        time.sleep(0.5)
    raise TimeoutError(f"delegated runs not finished: {[d.run_state for d in docs]}")
