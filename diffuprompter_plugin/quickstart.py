"""The main job: images in, pseudo-labels out, the App open on the result.

    python -m diffuprompter_plugin.quickstart IMAGES --classes "storage tank" ship
    python -m diffuprompter_plugin.quickstart --smoke        # no downloads

IMAGES is a scene-classification collection (UC Merced, NWPU-RESISC45, AID, ...:
its folders are mapped onto the paper's 12 categories), a folder of class
subfolders (each image gets its folder's name as class) or a flat folder of
images (give --classes). Rerunning resumes an interrupted run. ``--smoke``
runs tiny random-weight models on synthetic images to prove the whole path
works offline: its dataset, fields and tags say so, and its labels are
meaningless.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import fiftyone as fo
import numpy as np
from PIL import Image

from .brain import SMOKE_LABEL
from .engine.config import DEFAULT_SAM_MODEL, DEFAULT_SD_MODEL, DiffuPrompterConfig
from .engine.errors import ModelUnavailableError
from .engine.weights import cache_dir, missing_weights
from .importers import import_classification_collection
from .labelling import compute_pseudo_labels

SMOKE_TAG = "smoke-test"
SMOKE_CONFIG = DiffuPrompterConfig(loops=4, loop_batch_size=4, resolution=64, crf=False)
SMOKE_CLASSES = ("storage tank", "ship")
MODEL_ARGS = ("sd_model", "sam_model", "sam_checkpoint")
MISSING_ADVICE = (
    f"Download them with internet access (e.g. `hf download {DEFAULT_SD_MODEL} --local-dir "
    "PATH`; SAM from https://github.com/facebookresearch/segment-anything#model-checkpoints), "
    "then rerun with --sd-model PATH and/or --sam-checkpoint FILE, or try --smoke to check "
    "the install offline."
)


def synthetic_images(folder: Path, count: int = 4) -> Path:
    """Writes ``count`` 64 x 64 synthetic scenes (bright discs on noise)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:64, :64]
    for i in range(count):
        image = rng.integers(20, 80, (64, 64, 3)).astype(np.uint8)
        for _ in range(2):
            cx, cy = rng.integers(12, 52, 2)
            image[np.hypot(xx - cx, yy - cy) < 8] = (210, 210, 200)
        Image.fromarray(image).save(folder / f"synthetic_{i}.png")
    return folder


def load_images(images: Path, name: str, overwrite: bool = False) -> fo.Dataset:
    """The persistent dataset ``name`` of the folder's images, saying what it did.

    A recognised collection (UC Merced, NWPU-RESISC45, ...) goes through
    :func:`import_classification_collection`, which maps its folders onto the
    paper's categories; other class subfolders become ``ground_truth`` as
    they are; a flat folder gives unlabelled samples. An existing dataset of
    that name gets the folder's images it lacks, so an interrupted main job
    resumes where it stopped and new images are labelled too; ``overwrite``
    deletes it (with its runs and heatmaps) and imports afresh.

    Raises:
        ValueError: the folder holds no image.
    """
    if overwrite and fo.dataset_exists(name):
        existing = fo.load_dataset(name)
        existing.delete_brain_runs()
        existing.delete()
        print(f"Deleted the existing dataset '{name}' (--overwrite)")
    had = len(fo.load_dataset(name)) if fo.dataset_exists(name) else None
    try:
        report = import_classification_collection(images, name)
    except ValueError:  # not a known collection: a plain image folder
        _import_folder(images, name)
    else:
        print(f"Imported {report.added} images; skipped {len(report.skipped)}")
    dataset = fo.load_dataset(name) if fo.dataset_exists(name) else None
    if dataset is None or len(dataset) == 0:
        if dataset is not None:
            dataset.delete()
        raise ValueError(f"No images found in '{images}'")
    if had is not None:
        print(
            f"Added {len(dataset) - had} new images from '{images}' to the existing dataset "
            f"'{name}' ({had} were there; --overwrite re-imports)"
        )
    return dataset


def _import_folder(images: Path, name: str) -> None:
    """Adds the images of a plain folder (with or without class subfolders)
    that the dataset ``name`` lacks, creating it persistent if needed."""
    has_classes = any(p.is_dir() for p in images.iterdir())
    dataset_type = (
        fo.types.ImageClassificationDirectoryTree if has_classes else fo.types.ImageDirectory
    )
    found = fo.Dataset.from_dir(dataset_dir=str(images), dataset_type=dataset_type)
    try:
        if not fo.dataset_exists(name):
            found.clone(name, persistent=True)
        else:
            fo.load_dataset(name).merge_samples(found, key_field="filepath", skip_existing=True)
    finally:
        found.delete()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="?", type=Path, help="folder of images")
    parser.add_argument("--classes", nargs="+", help="class names for every image")
    parser.add_argument("--smoke", action="store_true", help="tiny random-weight models")
    parser.add_argument(
        "--dataset", default="diffuprompter-quickstart", help="name of the FiftyOne dataset"
    )
    parser.add_argument(
        "--sd-model", default=DEFAULT_SD_MODEL, help="hub id or local diffusers folder"
    )
    parser.add_argument(
        "--sam-model", default=DEFAULT_SAM_MODEL, help="vit_h, vit_l, vit_b or a SAM folder"
    )
    parser.add_argument(
        "--sam-checkpoint", help="SAM checkpoint file (default: Meta's, downloaded and cached)"
    )
    parser.add_argument("--device", help="cuda, cuda:1, cpu, ... (default: CUDA if available)")
    parser.add_argument(
        "--loops", type=int, default=DiffuPrompterConfig.loops, help="noise draws L (LSAD)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an existing dataset of that name (runs, heatmaps) and import afresh; "
        "without it, the folder's new images are added to it",
    )
    parser.add_argument("--no-app", action="store_true", help="do not open the App")
    parser.add_argument("--port", type=int, default=5151, help="the App's port")
    parser.add_argument(
        "--address",
        default="localhost",
        help="the App's address; 0.0.0.0 serves it to other machines too",
    )
    args = parser.parse_args(argv)

    if args.images is None and not args.smoke:
        parser.error("give an image folder, or --smoke for the offline check")
    kwargs = {}
    if args.smoke:
        from .engine.tiny import write_tiny_models

        sd, sam = write_tiny_models(cache_dir() / "tiny-models")
        images = args.images or synthetic_images(cache_dir() / "smoke-images")
        name = f"{args.dataset}-smoke"
        kwargs = dict(
            sd_model=str(sd),
            sam_model=str(sam),
            config=SMOKE_CONFIG,
            smoke=True,
            pred_field="smoke_instances",
            heatmap_field="smoke_heatmap",
        )
    else:
        images, name = args.images, args.dataset
        kwargs = dict(
            sd_model=args.sd_model,
            sam_model=args.sam_model,
            sam_checkpoint=args.sam_checkpoint,
            config=DiffuPrompterConfig(loops=args.loops),
        )

    if not Path(images).is_dir():
        print(f"\nImage folder '{images}' does not exist", file=sys.stderr)
        return 2
    missing = [] if args.smoke else missing_weights(**{k: kwargs[k] for k in MODEL_ARGS})
    if missing:  # checked before a dataset is made, both models at once
        print(
            "\nModel weights are missing:\n- " + "\n- ".join(missing) + "\n" + MISSING_ADVICE,
            file=sys.stderr,
        )
        return 2
    try:
        dataset = load_images(images, name, args.overwrite)
    except ValueError as e:
        print(f"\n{e}", file=sys.stderr)
        return 2
    if args.smoke:
        dataset.description = SMOKE_LABEL
        dataset.info["smoke"] = SMOKE_LABEL
        dataset.save()
        dataset.tag_samples(SMOKE_TAG)
    if args.classes:
        source = {"classes": args.classes}
    elif dataset.has_sample_field("ground_truth"):
        source = {"class_field": "ground_truth"}
    elif args.smoke:
        source = {"classes": list(SMOKE_CLASSES)}
    else:
        parser.error("the images have no class subfolders: give --classes")
    try:
        results = compute_pseudo_labels(
            dataset,
            "smoke" if args.smoke else "diffuprompter",
            device=args.device,
            **source,
            **kwargs,
        )
    except ModelUnavailableError as e:
        print(f"\nModel weights are missing.\n{e}\n{MISSING_ADVICE}", file=sys.stderr)
        return 2
    except ValueError as e:  # unsupported model, taken field names, changed settings
        print(f"\n{e}", file=sys.stderr)
        return 2
    print(results.summary())
    if not args.no_app:
        serve_app(dataset, args.port, args.address)
    return 0


def serve_app(dataset: fo.Dataset, port: int, address: str) -> None:
    """Serves the App until Ctrl-C or SIGTERM; either way the App's server
    processes are stopped with it (SIGTERM would otherwise kill this process
    alone and leave them running)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    session = fo.launch_app(dataset, port=port, address=address)
    print(f"App open at http://localhost:{port} (Ctrl-C to stop)", flush=True)
    try:
        session.wait(-1)
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
