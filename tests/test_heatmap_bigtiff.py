"""Scene heatmaps over 4 GiB: BigTIFF where needed, temp folders removed on
failure, GDAL's message in the error (issue 22 item 6)."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import rasterio
from rasterio.errors import RasterioIOError
from test_tiling import TILED, scene, stub_model

from diffuprompter_plugin.engine import heatmap_store
from diffuprompter_plugin.engine.heatmap_store import HeatmapWriter, heatmap_profile

GDAL_TEXT = "TIFFAppendToStrip:Maximum TIFF file size exceeded. Use BIGTIFF=YES creation option."


def test_bigtiff_is_chosen_by_size():
    needs_bigtiff = heatmap_store.needs_bigtiff
    assert not needs_bigtiff(1024, 1024)
    assert not needs_bigtiff(30_000, 30_000)  # 1.8 GB of uint16, 2.4 GB with overviews
    assert needs_bigtiff(40_000, 40_000)  # 3.2 GB, 4.3 GB with overviews: past 4 GiB
    assert needs_bigtiff(200_000, 200_000)  # the 80 GB scene that failed after 200 s
    assert heatmap_profile(200_000, 200_000)["BIGTIFF"] == "YES"
    assert heatmap_profile(1024, 1024)["BIGTIFF"] == "NO"


def test_the_writer_writes_bigtiff_when_chosen(tmp_path, monkeypatch):
    for big, magic in ((False, 42), (True, 43)):
        monkeypatch.setattr(heatmap_store, "needs_bigtiff", lambda h, w, big=big: big)
        path = str(tmp_path / f"{big}.tif")
        writer = HeatmapWriter({"car": path}, (64, 80))
        writer.write("car", (0, 0, 80, 64), np.full((64, 80), 0.5, np.float32))
        writer.close()
        with open(path, "rb") as f:
            assert int.from_bytes(f.read(4)[2:], "little") == magic  # 42 classic, 43 BigTIFF
        with rasterio.open(path) as src:
            assert src.read(1).max() == round(0.5 * 65535)


def test_a_failed_write_names_the_file_gdal_and_removes_the_temp_folders(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    written = []
    write = rasterio.io.DatasetWriter.write

    def failing(self, *args, **kwargs):  # GDAL fails on the third window
        if len(written) == 2:
            try:
                raise RasterioIOError(GDAL_TEXT)
            except RasterioIOError as cause:
                raise RasterioIOError(
                    "Write failed. See previous exception for details."
                ) from cause
        written.append(self.name)
        return write(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", failing)
    with pytest.raises(OSError, match=r"Cannot write heatmap '.*\.tif': .*Maximum TIFF file size"):
        stub_model(TILED).annotate(scene(), ["car"])
    assert written and all(str(scratch) in w for w in written)
    assert list(scratch.iterdir()) == []  # neither dp-scene-* nor dp-heatmaps-* is left


def test_a_labelled_scene_leaves_no_temp_folder(tmp_path, monkeypatch):
    import fiftyone as fo
    from PIL import Image

    from diffuprompter_plugin.labelling import compute_pseudo_labels

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    Image.fromarray(scene()).save(tmp_path / "scene.png")
    dataset = fo.Dataset()
    dataset.add_sample(fo.Sample(filepath=str(tmp_path / "scene.png")))
    compute_pseudo_labels(dataset, "dp", classes=["car", "ship"], model=stub_model(TILED))
    sample = dataset.first()
    for field in ("dp_heatmap_car", "dp_heatmap_ship"):
        with rasterio.open(sample[field]["geotiff_path"]) as src:
            assert (src.height, src.width) == (200, 210)
    assert list(scratch.iterdir()) == []  # the heatmaps were moved out, the folder removed


def test_a_writer_that_cannot_open_every_file_closes_the_ones_it_opened(tmp_path, monkeypatch):
    real, opened = rasterio.open, []

    def second_fails(path, *args, **kwargs):
        opened.append(path)
        if len(opened) == 2:
            raise RasterioIOError("No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", second_fails)
    paths = {"a": str(tmp_path / "a.tif"), "b": str(tmp_path / "b.tif")}
    with pytest.raises(OSError, match=r"Cannot write heatmap '.*b\.tif': .*No space left") as e:
        HeatmapWriter(paths, (64, 64))
    held = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    assert e.value and os.path.realpath(paths["a"]) not in held  # not kept open by the error
