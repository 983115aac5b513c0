"""Remote scenes read where they live: COGs over HTTP (a local range server)
and S3 (moto's server), with the bytes each read fetched."""

from __future__ import annotations

import os
import shutil

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
import rasterio
from fiftyone.operators.executor import ExecutionError
from PIL import Image
from range_server import RangeServer
from remote_scenes import write_cog
from test_tiling import TILED, stub_model

from diffuprompter_plugin.engine.errors import InputImageError
from diffuprompter_plugin.engine.raster import FileRaster, RasterFile
from diffuprompter_plugin.engine.remote import RemoteReadError, display_name, gdal_path, is_remote
from diffuprompter_plugin.engine.scenes import segment_scene
from diffuprompter_plugin.importers import import_geotiffs
from diffuprompter_plugin.labelling import compute_pseudo_labels, resume_pseudo_labels

WIDTH, HEIGHT = 1024, 768


@pytest.fixture
def served(tmp_path):
    """(server, local scene path) of a 1024 x 768 COG in 128-px blocks."""
    path = write_cog(tmp_path / "scene.tif", WIDTH, HEIGHT)
    with RangeServer(tmp_path, lifetime=300) as server:
        yield server, path


def _intervals(log) -> list[tuple[int, int]]:
    """(first, last) byte of every range request answered 206."""
    out = []
    for s in log:
        if s.status == 206:
            first, last = s.range.removeprefix("bytes=").split("-")
            out.append((int(first), int(first) + s.bytes - 1))
    return sorted(out)


def test_urls_map_to_gdal_paths_in_one_place():
    assert gdal_path("https://h.org/a/b.tif?sig=x") == "/vsicurl/https://h.org/a/b.tif?sig=x"
    assert gdal_path("http://127.0.0.1:9/b.tif") == "/vsicurl/http://127.0.0.1:9/b.tif"
    assert gdal_path("s3://bucket/k/b.tif") == "/vsis3/bucket/k/b.tif"
    assert gdal_path("/data/b.tif") == "/data/b.tif"
    assert [is_remote(p) for p in ("S3://b/k", "/vsicurl/x", "/data/a.tif", "C:/a.tif")] == [
        True,
        True,
        False,
        False,
    ]
    assert display_name("https://h.org/scenes/T33.tif?se=2026&sig=a%2Fb") == "T33"


def test_a_window_fetches_only_its_blocks_and_equals_the_local_read(served):
    server, path = served
    box = (130, 10, 380, 200)  # blocks: columns 1-2, rows 0-1 of 128 px
    with rasterio.open(path) as src:
        blocks = sum(src.block_size(1, i, j) for i in (0, 1) for j in (1, 2))
    with FileRaster(server.url("scene.tif")) as remote, FileRaster(path) as local:
        opened = server.served()
        rgb, valid = remote.read(box)
        np.testing.assert_array_equal(rgb, local.read(box)[0])
        assert valid is None
    fetched = server.served() - opened
    assert blocks <= fetched <= blocks + 4 * 16  # each block and its 4-byte size leader
    assert opened <= 16384  # the header: one 16 KB request


def test_remote_import_reads_the_header_and_an_overview(served, dataset_name):
    server, path = served
    url = server.url("scene.tif")
    report = import_geotiffs([url], dataset_name, preview_size=128)
    assert (report.added, report.skipped) == (1, [])
    size = path.stat().st_size
    assert server.served() < 0.05 * size  # header + the 8x overview, not the file
    assert {s.status for s in server.log()} == {200, 206}  # no folder listing, no 404s

    remote = fo.load_dataset(dataset_name).first()
    local_name = f"{dataset_name}-local"
    try:
        import_geotiffs(path, local_name, preview_size=128)
        local = fo.load_dataset(local_name).first()
        assert remote.filepath == url
        a, b = remote.to_dict(), local.to_dict()
        for field in ("crs", "transform", "bands", "nodata"):
            assert a.get(field) == b.get(field), field
        assert remote.location.polygon == local.location.polygon
        assert (remote.metadata.width, remote.metadata.height) == (WIDTH, HEIGHT)
        assert remote.metadata.size_bytes is None
        preview = np.asarray(Image.open(remote.preview_path))
        assert preview.shape == (96, 128, 3)
        np.testing.assert_array_equal(preview, np.asarray(Image.open(local.preview_path)))
    finally:
        fo.delete_dataset(local_name)
    again = import_geotiffs(url, dataset_name)
    assert (again.added, again.existing) == (0, 1)


def test_labelling_a_remote_scene_fetches_each_block_once(served, tmp_path):
    server, path = served
    model = stub_model(TILED.replace(tile_size=256, tile_overlap=32))  # 5 x 4 tiles
    classes = ["ship", "storage tank"]  # fetched once for both, not once per class
    local = model.annotate(str(path), classes)
    remote = model.annotate(server.url("scene.tif"), classes)
    ranges = _intervals(server.log())  # consecutive blocks share only their 4-byte leaders
    overlaps = [a[1] - b[0] + 1 for a, b in zip(ranges, ranges[1:], strict=False)]
    assert max(overlaps) <= 8, "a block fetched twice"
    with rasterio.open(path) as src:
        full_resolution = sum(
            src.block_size(1, i, j) for i in range(HEIGHT // 128) for j in range(WIDTH // 128)
        )
    assert full_resolution <= server.served() <= 1.01 * full_resolution + 16384  # + header
    assert len(remote.instances) == len(local.instances) > 5
    for a, b in zip(remote.instances, local.instances, strict=True):
        assert (a.label, a.box, a.score) == (b.label, b.box, b.score)
        np.testing.assert_array_equal(a.mask, b.mask)

    before = server.served()  # re-thresholding: each block once more (and the header)
    with FileRaster(server.url("scene.tif")) as raster:
        again = segment_scene(model.sam_prompter, raster, remote.heatmap_files, 0.5)
    assert full_resolution <= server.served() - before <= 1.01 * full_resolution + 16384
    assert [i.box for i in again] == [i.box for i in segment_scene(
        model.sam_prompter, FileRaster(path), local.heatmap_files, 0.5)]  # fmt: skip
    for annotation in (local, remote):  # the heatmaps' temporary folders
        shutil.rmtree(os.path.dirname(next(iter(annotation.heatmap_files.values()))))


def test_a_transient_error_fails_the_sample_and_resume_retries_it(
    served, dataset_name, monkeypatch
):
    server, path = served
    url = server.url("scene.tif")
    import_geotiffs(url, dataset_name, preview_size=64)
    dataset = fo.load_dataset(dataset_name)
    model = stub_model(TILED.replace(tile_size=512, tile_overlap=64))

    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.1")
    before = len(server.log())
    server.fail(2)  # within GDAL's retries (3 by default): read as if nothing happened
    box = (512, 512, 640, 640)
    with FileRaster(url) as remote, FileRaster(path) as local:
        np.testing.assert_array_equal(remote.read(box)[0], local.read(box)[0])
    assert [s.status for s in server.log()[before:]] == [503, 503, 206]

    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    server.fail(1000)  # the server is down
    results = compute_pseudo_labels(dataset, "dp", classes=["ship"], model=model)
    (error,) = results.failures.values()
    assert url in error and "resuming the run retries it" in error and "503" in error
    assert dataset.first()["dp_instances_error"] == error
    assert dataset.count("dp_instances") == 0

    server.fail(0)  # back up
    resumed = resume_pseudo_labels(dataset, "dp", model=model)
    assert resumed.failures == {} and dataset.count("dp_instances") == 1
    assert len(dataset.first().dp_instances.detections) > 5


def test_a_read_error_before_any_pixel_names_the_url(served):
    server, _ = served
    with pytest.raises(RemoteReadError, match="missing.tif.*resuming the run retries it"):
        FileRaster(server.url("missing.tif"))
    assert issubclass(RemoteReadError, InputImageError)


def test_s3_scene_reads_like_the_local_file(tmp_path, dataset_name, monkeypatch):
    pytest.importorskip("moto", reason="moto[server] is a test extra (S3 tests)")
    from s3_server import S3Server

    path = write_cog(tmp_path / "s3scene.tif", 512, 384)
    with S3Server(lifetime=300) as s3:
        (url,) = s3.upload("scenes", [path])
        for key, value in s3.gdal_env().items():
            monkeypatch.setenv(key, value)
        box = (130, 10, 250, 120)  # one block of 128 px
        with FileRaster(url) as remote, FileRaster(path) as local:
            np.testing.assert_array_equal(remote.read(box)[0], local.read(box)[0])
        with rasterio.open(path) as src:
            block = src.block_size(1, 0, 1)
        chunks = 1 + -(-block // 16384) + 1  # the header, the block in GDAL's 16 KB chunks
        assert block <= s3.served("scenes/s3scene.tif") <= 16384 * chunks
        report = import_geotiffs([url], dataset_name, preview_size=64)
        sample = fo.load_dataset(dataset_name).first()
        assert report.added == 1 and sample.filepath == url and sample.crs is not None
        model = stub_model(TILED.replace(tile_size=256, tile_overlap=32))
        remote = model.annotate(RasterFile(url, (1, 2, 3)), ["ship"])
        local = model.annotate(str(path), ["ship"])
        assert [i.box for i in remote.instances] == [i.box for i in local.instances]


def test_a_url_without_an_image_extension_is_skipped_with_the_reason(served, dataset_name):
    server, path = served
    (path.parent / "download").write_bytes(path.read_bytes())
    report = import_geotiffs(
        [server.url("download?id=7"), server.url("scene.tif")], dataset_name, preview_size=64
    )
    assert report.added == 1
    ((url, reason),) = report.skipped
    assert url == server.url("download?id=7") and "no image extension such as .tif" in reason


def test_the_import_operator_takes_scene_urls_one_per_line(served, tmp_path, dataset_name):
    server, _ = served
    write_cog(tmp_path / "second.tif", 256, 256)
    urls = [server.url("scene.tif"), server.url("second.tif")]
    op = foo.get_operator("@diffuprompter/diffuprompter/import_geotiffs")
    result = op(urls="\n".join(urls) + "\n", dataset_name=dataset_name, preview_size=64)
    assert result.result["added"] == 2
    assert sorted(fo.load_dataset(dataset_name).values("filepath")) == sorted(urls)
    again = op(urls=f"  {urls[0]}\n\n{urls[1]}  ", dataset_name=dataset_name)
    assert (again.result["added"], again.result["existing"]) == (0, 2)
    for params in ({}, {"root": str(tmp_path), "urls": urls[0]}):  # neither, or both
        with pytest.raises(ExecutionError, match="Choose a folder of scenes or give scene URLs"):
            op(dataset_name=dataset_name, **params)
