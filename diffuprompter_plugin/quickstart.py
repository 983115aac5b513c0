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
import sys
from pathlib import Path

import fiftyone as fo
import numpy as np
from PIL import Image

from .brain import SMOKE_LABEL
from .engine.config import DEFAULT_SAM_MODEL, DEFAULT_SD_MODEL, DiffuPrompterConfig
from .engine.errors import ModelUnavailableError
from .engine.models import cache_dir
from .importers import import_classification_collection
from .labelling import compute_pseudo_labels

SMOKE_TAG = "smoke-test"
SMOKE_CONFIG = DiffuPrompterConfig(loops=4, loop_batch_size=4, resolution=64, crf=False)
SMOKE_CLASSES = ("storage tank", "ship")


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


def load_images(images: Path, name: str) -> fo.Dataset:
    """The persistent dataset ``name`` of the folder's images.

    A recognised collection (UC Merced, NWPU-RESISC45, ...) goes through
    :func:`import_classification_collection`, which maps its folders onto the
    paper's categories; other class subfolders become ``ground_truth`` as
    they are; a flat folder gives unlabelled samples. An existing dataset of
    that name is reused, so an interrupted main job resumes where it stopped.
    """
    if fo.dataset_exists(name):
        print(f"Using the existing dataset '{name}' (delete it to re-import)")
        return fo.load_dataset(name)
    if not images.is_dir():
        raise FileNotFoundError(f"Image folder '{images}' does not exist")
    try:
        report = import_classification_collection(images, name)
    except ValueError:  # not a known collection: a plain image folder
        has_classes = any(p.is_dir() for p in images.iterdir())
        dataset_type = (
            fo.types.ImageClassificationDirectoryTree if has_classes else fo.types.ImageDirectory
        )
        dataset = fo.Dataset.from_dir(
            dataset_dir=str(images), dataset_type=dataset_type, name=name
        )
        dataset.persistent = True
    else:
        print(f"Imported {report.added} images; skipped {len(report.skipped)}")
        dataset = fo.load_dataset(name)
    if len(dataset) == 0:
        dataset.delete()
        raise ValueError(f"No images found in '{images}'")
    return dataset


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

    dataset = load_images(images, name)
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
        print(
            f"\nModel weights are missing.\n{e}\nThen rerun with --sd-model PATH and/or "
            "--sam-checkpoint FILE, or try --smoke to check the install offline.",
            file=sys.stderr,
        )
        return 2
    except ValueError as e:  # unsupported model, taken field names, changed settings
        print(f"\n{e}", file=sys.stderr)
        return 2
    print(results.summary())
    if not args.no_app:
        session = fo.launch_app(dataset, port=args.port, address=args.address)
        print(f"App open at http://localhost:{args.port} (Ctrl-C to stop)")
        session.wait(-1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
