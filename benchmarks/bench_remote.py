"""A scene labelled where it lives: bytes fetched and seconds, remote against local.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_remote.py [--side 4096]
        [--tile-size 1024] [--classes 1] [--preview-size 512]

Writes an RGB uint8 COG (512-px deflate blocks, average overviews) to a
temporary folder and serves it from the tests' range server on 127.0.0.1
(a process of its own that logs every byte it sends). Then:

1. imports it with ``import_geotiffs(url)`` (header, georeferencing and a
   ``--preview-size`` preview): bytes fetched against the file's size;
2. labels it with the tiny random-weight models (CRF off, 1 loop) in tiles
   of ``--tile-size``, from its file and from its URL: seconds of each,
   bytes fetched against the file and against its full-resolution blocks,
   requests, and ranges fetched twice;
3. re-thresholds it from the stored heatmaps (SAM only), from its URL:
   bytes fetched.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fiftyone_home import use_throwaway_home  # noqa: E402

MB = 1e6


def full_resolution_bytes(path: Path) -> int:
    """The compressed bytes of the scene's full-resolution blocks (no overviews)."""
    import rasterio

    with rasterio.open(path) as src:
        rows = -(-src.height // src.block_shapes[0][0])
        cols = -(-src.width // src.block_shapes[0][1])
        return sum(src.block_size(1, i, j) for i in range(rows) for j in range(cols))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=1)
    parser.add_argument("--preview-size", type=int, default=512)
    args = parser.parse_args()
    use_throwaway_home("bench-remote-", FIFTYONE_SHOW_PROGRESS_BARS="false")

    import fiftyone as fo
    import numpy as np
    import rasterio
    from range_server import RangeServer
    from remote_scenes import write_cog

    from diffuprompter_plugin import DiffuPrompter, DiffuPrompterConfig
    from diffuprompter_plugin.engine.raster import FileRaster
    from diffuprompter_plugin.engine.scenes import segment_scene
    from diffuprompter_plugin.engine.tiny import write_tiny_models
    from diffuprompter_plugin.importers import import_geotiffs

    folder = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    try:
        path = write_cog(folder / "scene.tif", args.side, args.side, blocksize=512)
        size = path.stat().st_size
        full = full_resolution_bytes(path)
        with rasterio.open(path) as src:
            overviews = src.overviews(1)
        print(
            f"scene {args.side}x{args.side} RGB uint8 COG, 512-px deflate blocks, overviews "
            f"{overviews}: {size / MB:.1f} MB ({full / MB:.1f} MB at full resolution)"
        )
        sd, sam = write_tiny_models(folder / "models")
        config = DiffuPrompterConfig(
            loops=1,
            loop_batch_size=16,
            resolution=64,
            crf=False,
            tile_size=args.tile_size,
            tile_overlap=args.tile_size // 8,
        )
        model = DiffuPrompter.from_pretrained(str(sd), str(sam), device="cpu", config=config)
        names = ["ship", "storage tank", "harbor", "vehicle"][: args.classes]
        model.annotate(np.zeros((64, 64, 3), np.uint8), names)  # warm-up, timed by neither

        with RangeServer(folder, lifetime=3600) as server:
            url = server.url("scene.tif")
            start = time.perf_counter()
            import_geotiffs(url, "bench-remote", preview_size=args.preview_size)
            seconds = time.perf_counter() - start
            fetched, requests = server.served(), server.requests()
            print(
                f"import ({args.preview_size}-px preview): {fetched / MB:.2f} MB fetched, "
                f"{100 * fetched / size:.1f} % of the file, {requests} requests, {seconds:.2f} s"
            )
            fo.delete_dataset("bench-remote")

            start = time.perf_counter()
            local = model.annotate(str(path), names)
            local_s = time.perf_counter() - start
            before, log_before = server.served(), len(server.log())
            start = time.perf_counter()
            remote = model.annotate(url, names)
            remote_s = time.perf_counter() - start
            log = server.log()[log_before:]
            fetched = server.served() - before
            twice = sum(n - 1 for n in Counter(s.range for s in log if s.range).values())
            same = [i.box for i in remote.instances] == [i.box for i in local.instances]
            print(
                f"label ({len(names)} class, {len(remote.instances)} instances, same as local: "
                f"{same}): {fetched / MB:.1f} MB fetched = {fetched / size:.2f}x the file, "
                f"{fetched / full:.3f}x its full-resolution blocks; {len(log)} requests, "
                f"{twice} ranges fetched twice"
            )
            print(
                f"label seconds: remote {remote_s:.1f} s, local {local_s:.1f} s "
                f"({remote_s / local_s:.2f}x)"
            )

            before = server.served()
            start = time.perf_counter()
            with FileRaster(url) as raster:
                segment_scene(model.sam_prompter, raster, remote.heatmap_files, 0.5)
            seconds = time.perf_counter() - start
            fetched = server.served() - before
            print(
                f"re-threshold: {fetched / MB:.1f} MB fetched = {fetched / full:.3f}x the "
                f"full-resolution blocks, {seconds:.1f} s"
            )
        for annotation in (local, remote):
            annotation.discard()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
