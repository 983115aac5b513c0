"""What the quality signals cost: a run with them against the same run with
their work replaced by no-ops, tiny models on the CPU (and full-size SD v1.5
+ SAM ViT-H architectures on a GPU when present).

    .venv/bin/python benchmarks/bench_signals.py [--images 3] [--repeats 3] [--side 256]

Rows: seconds per image of ``annotate_all`` (the engine) and of a brain run
(``compute_pseudo_labels``: the engine, the heatmap and spread files and the
database), ``--side`` px images grounded at that resolution, L=50 in one
U-Net call per class, CRF off, for 1 and 5 classes; signals on and off,
measured alternately ``--repeats`` times (the medians, their difference and
ratio); and the seconds spent inside the signals' own work during one more
brain run (:class:`SignalClock`), which the machine's noise does not swamp.
"Off" replaces with no-ops: the grounder's
running moments (:class:`~diffuprompter_plugin.engine.grounding.DrawMoments`
``add`` and ``spread``), SAM's stability scores, each instance's heat
contrast and draw agreement, and the writing of the spread beside each
heatmap. What stays in both: one bilinear resize of the spread per class
and image, the logits SAM returns anyway, and storing the attributes.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from unittest import mock

import numpy as np
import torch
from throwaway import use_throwaway_home

CLASSES = ["storage tank", "ship", "harbor", "airplane", "bridge"]


@contextlib.contextmanager
def signals_off() -> Iterator[None]:
    """The signals' work replaced by no-ops (see the module's docstring)."""
    from diffuprompter_plugin.engine import grounding, segmentation
    from diffuprompter_plugin.labelling import writer

    def no_spread(self, normalization: str) -> torch.Tensor:
        return torch.zeros_like(self.mean)

    def write_heatmap(heatmap, path, geotiff=None, spread=None):
        return labels_write(heatmap, path, geotiff)

    labels_write = writer.write_heatmap
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(grounding.DrawMoments, "add", lambda *a: None))
        stack.enter_context(mock.patch.object(grounding.DrawMoments, "spread", no_spread))
        zeros = lambda logits, threshold: torch.zeros(len(logits))  # noqa: E731
        stack.enter_context(mock.patch.object(segmentation, "stability_scores", zeros))
        stack.enter_context(mock.patch.object(segmentation, "heat_contrast", lambda *a: 0.0))
        stack.enter_context(mock.patch.object(segmentation, "draw_agreement", lambda *a: 0.0))
        stack.enter_context(mock.patch.object(writer, "write_heatmap", write_heatmap))
        yield


class SignalClock:
    """Seconds spent in the signals' own work (the functions
    :func:`signals_off` replaces, and the spread's PNG), summed while
    active: a figure that a shared machine's noise does not swamp."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def _timed(self, call: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return wrapper

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        from diffuprompter_plugin import labels
        from diffuprompter_plugin.engine import grounding, segmentation

        targets = [
            (grounding.DrawMoments, "add"),
            (grounding.DrawMoments, "spread"),
            (segmentation, "stability_scores"),
            (segmentation, "heat_contrast"),
            (segmentation, "draw_agreement"),
            (labels, "write_spread"),
        ]
        with contextlib.ExitStack() as stack:
            for owner, name in targets:
                timed = self._timed(getattr(owner, name))
                stack.enter_context(mock.patch.object(owner, name, timed))
            yield


def images(count: int, side: int) -> list[np.ndarray]:
    """Dim noise with bright squares (a quarter of the side), so that SAM
    gets regions to prompt."""
    rng = np.random.default_rng(0)
    out = []
    square = side // 4
    for _ in range(count):
        image = (rng.random((side, side, 3)) * 60).astype(np.uint8)
        for _ in range(4):
            x, y = rng.integers(0, side - square, 2)
            image[y : y + square, x : x + square] = 220
        out.append(image)
    return out


def alternate(steps: dict[str, Callable[[], None]], repeats: int, cuda: bool) -> dict[str, float]:
    """Median seconds of each step, the steps run in turn ``repeats`` times
    (so that a shared machine's drift reaches each alike)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def rows(label: str, model, batch: list[np.ndarray], folder: str, repeats: int) -> None:
    import fiftyone as fo
    from PIL import Image

    from diffuprompter_plugin import compute_pseudo_labels

    paths = []
    for i, image in enumerate(batch):
        paths.append(f"{folder}/signals_{i}.png")
        Image.fromarray(image).save(paths[-1])
    cuda = model.grounder.device.type == "cuda"
    for classes in (1, 5):
        names = CLASSES[:classes]
        items = [(i, image, names) for i, image in enumerate(batch)]

        def stream(items=items) -> None:
            results = list(model.annotate_all(items))
            assert not any(isinstance(r, Exception) for _, r in results)

        def brain_run(names=names) -> None:
            dataset = fo.Dataset()
            dataset.add_samples(fo.Sample(filepath=p) for p in paths)
            compute_pseudo_labels(dataset, "bench", classes=names, model=model, progress=False)
            assert len(dataset.exists("dp_instances")) == len(paths)
            dataset.delete()

        def off(step: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                with signals_off():
                    step()

            return run

        stream()  # warm-up
        brain_run()
        medians = alternate(
            {"stream on": stream, "stream off": off(stream), "run on": brain_run,
             "run off": off(brain_run)},
            repeats,
            cuda,
        )  # fmt: skip
        clock = SignalClock()
        with clock.active():
            whole = alternate({"run": brain_run}, 1, cuda)["run"]
        own_ms, whole_s = clock.seconds / len(batch) * 1000, whole / len(batch)
        print(
            f"{label}, {classes} classes, brain run: the signals' own work "
            f"{own_ms:.1f} ms/image of {whole_s:.3f} s/image ({clock.seconds / whole:.2%})",
            flush=True,
        )
        per_image = {k: v / len(batch) for k, v in medians.items()}
        for kind, name in (("stream", "annotate_all"), ("run", "brain run")):
            on, off_s = per_image[f"{kind} on"], per_image[f"{kind} off"]
            print(
                f"{label}, {classes} classes, {name}: signals on {on:.3f} s/image, "
                f"off {off_s:.3f} s/image: {(on - off_s) * 1000:+.0f} ms, "
                f"{on / off_s - 1:+.1%}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--side", type=int, default=256, help="image side and resolution, px")
    args = parser.parse_args()
    home = use_throwaway_home()
    from diffuprompter_plugin import DiffuPrompter, DiffuPrompterConfig
    from diffuprompter_plugin.engine.tiny import write_tiny_models

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, CUDA: {torch.cuda.is_available()}")
    side = args.side
    config = DiffuPrompterConfig(resolution=side, loops=50, loop_batch_size=50, crf=False)
    batch = images(args.images, side)
    with tempfile.TemporaryDirectory() as folder:
        sd, sam = (str(p) for p in write_tiny_models(folder))
        tiny = DiffuPrompter.from_pretrained(sd, sam, device="cpu", config=config)
        rows(f"tiny models, CPU, {side} px, L=50", tiny, batch, home, args.repeats)
    if torch.cuda.is_available():
        from bench_engine import full_size_models

        sd, sam = full_size_models()
        full = DiffuPrompter.from_pretrained(sd, sam, device="cuda", config=config)
        label = f"SD1.5 + SAM ViT-H, GPU fp16, {side} px, L=50"
        rows(label, full, batch, home, args.repeats)
    else:
        print("full-size models on GPU: skipped (no CUDA device)")


if __name__ == "__main__":
    main()
