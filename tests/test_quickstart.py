"""The README's main job: smoke mode offline, and a clear stop without weights."""

from __future__ import annotations

import os

import fiftyone as fo
import pytest

from diffuprompter_plugin.brain import SMOKE_LABEL
from diffuprompter_plugin.quickstart import SMOKE_TAG, main, synthetic_images


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUPROMPTER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_smoke_mode_is_labelled_everywhere(cache):
    name = "qs-test"
    try:
        assert main(["--smoke", "--no-app", "--dataset", name]) == 0
        dataset = fo.load_dataset(f"{name}-smoke")
        assert len(dataset) == 4 and dataset.persistent
        assert dataset.description == SMOKE_LABEL
        assert dataset.count_sample_tags() == {SMOKE_TAG: 4}
        assert dataset.count("smoke_instances") == 4
        config = dataset.get_brain_info("smoke").config
        assert config.smoke is True
        assert config.models["sd_model"] == str(cache / "tiny-models" / "sd")
        assert dataset.load_brain_results("smoke").summary()["smoke"] is True
    finally:
        if fo.dataset_exists(f"{name}-smoke"):
            fo.delete_dataset(f"{name}-smoke")


def test_missing_weights_stop_with_what_to_download(cache, tmp_path, capsys):
    images = synthetic_images(tmp_path / "images", count=2)
    name = "qs-missing"
    try:
        code = main(
            [
                str(images),
                "--classes",
                "ship",
                "--no-app",
                "--dataset",
                name,
                "--sd-model",
                str(tmp_path / "absent-sd"),
            ]
        )
        err = capsys.readouterr().err
        assert code == 2
        assert "Model weights are missing" in err and "absent-sd" in err
        assert "SAM 'vit_h' checkpoint is not in" in err  # both models reported at once
        assert "--sd-model PATH" in err
        assert not fo.dataset_exists(name)  # checked before the dataset is made
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_class_folders_give_each_image_its_class(cache, tmp_path):
    images = tmp_path / "by_class"
    synthetic_images(images / "storage tank", count=1)
    synthetic_images(images / "ship", count=1)
    name = "qs-folders"
    try:
        assert main([str(images), "--smoke", "--no-app", "--dataset", name]) == 0
        dataset = fo.load_dataset(f"{name}-smoke")
        labels = dataset.values("smoke_instances.detections.label")
        truth = dataset.values("ground_truth.label")
        assert sorted(truth) == ["ship", "storage tank"]
        assert all(set(found) <= {t} for found, t in zip(labels, truth, strict=True))
    finally:
        if fo.dataset_exists(f"{name}-smoke"):
            fo.delete_dataset(f"{name}-smoke")


def test_known_collection_is_mapped_and_rerun_resumes(cache, tmp_path, capsys):
    root = tmp_path / "UCMerced_LandUse" / "Images"
    synthetic_images(root / "storagetanks", count=2)
    synthetic_images(root / "forest", count=1)
    name = "qs-ucm"
    try:
        assert main([str(root.parent), "--smoke", "--no-app", "--dataset", name]) == 0
        dataset = fo.load_dataset(f"{name}-smoke")
        assert dataset.distinct("ground_truth.label") == ["storage tank"]
        assert dataset.distinct("source_collection") == ["UC Merced"]
        first = dataset.values("smoke_instances.detections.id")
        assert main([str(root.parent), "--smoke", "--no-app", "--dataset", name]) == 0
        assert dataset.values("smoke_instances.detections.id") == first  # nothing redone
        args = [str(root.parent), "--smoke", "--no-app", "--dataset", name, "--classes", "ship"]
        assert main(args) == 2  # same run, other classes: refused, not redone
        err = capsys.readouterr().err
        assert "Brain run 'smoke' exists with different" in err and "'classes'" in err
    finally:
        if fo.dataset_exists(f"{name}-smoke"):
            fo.delete_dataset(f"{name}-smoke")


def test_missing_folder_is_a_clean_error(cache, tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), "--classes", "ship", "--no-app"]) == 2
    assert f"Image folder '{tmp_path / 'nowhere'}' does not exist" in capsys.readouterr().err


def test_new_images_are_added_to_the_existing_dataset_or_overwritten(cache, tmp_path, capsys):
    name = "qs-grow"
    args = ["--smoke", "--no-app", "--dataset", name, "--classes", "ship"]
    try:
        first = synthetic_images(tmp_path / "first", count=2)
        assert main([str(first), *args]) == 0
        second = tmp_path / "second"
        synthetic_images(second, count=3)  # the same names in another folder: new files
        capsys.readouterr()
        assert main([str(second), *args]) == 0
        assert "Added 3 new images" in capsys.readouterr().out
        dataset = fo.load_dataset(f"{name}-smoke")
        assert len(dataset) == 5 and dataset.count("smoke_instances") == 5
        heatmaps = dataset.get_brain_info("smoke").config.heatmap_dir
        assert main([str(first), *args, "--overwrite"]) == 0
        assert "Deleted the existing dataset" in capsys.readouterr().out
        dataset = fo.load_dataset(f"{name}-smoke")
        assert len(dataset) == 2 and dataset.count("smoke_instances") == 2
        assert not os.path.exists(heatmaps)  # the old dataset's heatmaps went with it
    finally:
        if fo.dataset_exists(f"{name}-smoke"):
            fo.delete_dataset(f"{name}-smoke")


@pytest.mark.slow
def test_sigterm_stops_the_app_and_its_server_processes(cache, tmp_path):
    """The App runs until SIGTERM (as a job scheduler or ``kill`` sends it);
    then the quickstart and every process it started are gone."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    import psutil

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "diffuprompter_plugin.quickstart", "--smoke"]
    command += ["--port", str(port)]
    home = tmp_path / "fiftyone"  # its own database, so the App's services are its own
    env = dict(
        os.environ,
        FIFTYONE_DATABASE_DIR=str(home / "db"),
        FIFTYONE_DEFAULT_DATASET_DIR=str(home / "datasets"),
    )
    env.pop("FIFTYONE_DATABASE_URI", None)
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        deadline = time.time() + 300
        for line in proc.stdout:
            if "App open at" in line or time.time() > deadline:
                break
        assert proc.poll() is None, "the quickstart ended before serving the App"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the App starts server processes"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert [p.cmdline() for p in alive] == []
        assert code == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
