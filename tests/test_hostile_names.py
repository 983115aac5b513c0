"""Dataset names are never paths: every importer and output folder stays
inside FiftyOne's dataset dir (or the folder the caller names), whatever the
name (absolute, ``..``, separators)."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin
from test_importers import _image, _isaid_fixture, _nwpu_fixture

from diffuprompter_plugin.evaluation import evaluate_pseudo_labels
from diffuprompter_plugin.importers import (
    import_classification_collection,
    import_dlr_munich,
    import_geotiffs,
    import_isaid,
    import_nwpu_vhr10,
)

PLUGIN = "@diffuprompter/diffuprompter"
KINDS = ("__previews__", "__tiles__", "__patches__", "__diffuprompter__")


def _hostile(tmp_path: Path) -> list[str]:
    """An absolute name, one climbing out with ``..``, one mixing separators."""
    tag = os.urandom(3).hex()
    return [str(tmp_path / f"abs-{tag}"), f"../../up-{tag}", f"a/..\\../../mix-{tag}"]


def _files(root: str) -> set[str]:
    return {os.path.join(d, f) for d, _, files in os.walk(root) for f in files}


def _check_contained(name: str, kind: str, written: set[str], tmp_path: Path) -> None:
    """Nothing lies where the name would lead, and every new file lies in
    ``<dataset dir>/<kind>/<dataset id>``."""
    home = fo.config.default_dataset_dir
    for other in KINDS:
        target = os.path.normpath(os.path.join(home, other, name))
        assert not os.path.exists(target), target
    assert not (tmp_path / Path(name).name).exists()
    dataset_id = str(fo.load_dataset(name)._doc.id)
    folder = os.path.join(home, kind, dataset_id)
    assert written and all(os.path.dirname(f) == folder for f in written), written


@pytest.fixture
def hostile_names(tmp_path):
    names = _hostile(tmp_path)
    yield names
    for name in names:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def _geotiff(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=32, height=24, count=3, dtype="uint8")
    transform = from_origin(500_000.0, 5_000_000.0, 2.0, 2.0)
    with rasterio.open(path, "w", crs="EPSG:32633", transform=transform, **profile) as dst:
        dst.write(np.full((3, 24, 32), 90, np.uint8))


def test_importers_write_only_under_the_dataset_id(tmp_path, hostile_names):
    home = fo.config.default_dataset_dir
    scenes = tmp_path / "scenes"
    _geotiff(scenes / "s.tif")
    dlr = tmp_path / "dlr"
    _image(dlr / "frame.JPG", (120, 80))
    (dlr / "frame_pkw.samp").write_text("1 1 30 30 6 3 0\n")
    _isaid_fixture(tmp_path / "iSAID", {"plane": 1, "Small_Vehicle": 2, "ship": 3})
    nwpu = tmp_path / "NWPU VHR-10 dataset"
    _nwpu_fixture(nwpu, "(10,20),(30,40),1\n")
    _image(tmp_path / "UCMerced_LandUse" / "Images" / "storagetanks" / "t1.tif")
    for name in hostile_names:
        for kind, run in (
            ("__previews__", partial(import_geotiffs, scenes, name)),
            ("__tiles__", partial(import_dlr_munich, dlr, name, tile_size=64)),
            ("__patches__", partial(import_isaid, tmp_path / "iSAID", "val", name=name)),
        ):
            before = _files(str(tmp_path.parent)) | _files(home)
            report = run()
            assert report.added >= 1 and report.dataset_id == str(fo.load_dataset(name)._doc.id)
            written = (_files(str(tmp_path.parent)) | _files(home)) - before
            _check_contained(name, kind, written, tmp_path)
            fo.delete_dataset(name)
        before = _files(str(tmp_path.parent)) | _files(home)
        assert import_nwpu_vhr10(nwpu, name).added == 3
        assert import_classification_collection(tmp_path / "UCMerced_LandUse", name).added == 1
        assert (_files(str(tmp_path.parent)) | _files(home)) - before == set()  # nothing written
        fo.delete_dataset(name)


def test_renamed_dataset_keeps_its_tile_folder(tmp_path, dataset_name):
    dlr = tmp_path / "dlr"
    _image(dlr / "frame.JPG", (120, 80))
    (dlr / "frame_pkw.samp").write_text("1 1 30 30 6 3 0\n")
    first = import_dlr_munich(dlr, dataset_name, tile_size=64).added
    assert first >= 1
    dataset = fo.load_dataset(dataset_name)
    dataset.name = f"{dataset_name}-renamed"
    try:
        again = import_dlr_munich(dlr, dataset.name, tile_size=64)
        assert (again.added, again.existing) == (0, first)  # same folder: no duplicates
    finally:
        dataset.delete()


def test_import_operator_with_a_hostile_name(tmp_path, hostile_names):
    home = fo.config.default_dataset_dir
    _geotiff(tmp_path / "scenes" / "s.tif")
    name = hostile_names[1]
    before = _files(str(tmp_path.parent)) | _files(home)
    result = foo.get_operator(f"{PLUGIN}/import_geotiffs")(tmp_path / "scenes", dataset_name=name)
    assert result.error is None and result.result["added"] == 1
    written = (_files(str(tmp_path.parent)) | _files(home)) - before
    _check_contained(name, "__previews__", written, tmp_path)


def _one_image_dataset(tmp_path, name, **fields):
    dataset = fo.Dataset(name)
    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    metadata = fo.ImageMetadata(width=32, height=32)
    dataset.add_sample(fo.Sample(filepath=str(path), metadata=metadata, **fields))
    return dataset


def _written(tmp_path, action) -> set[str]:
    """The files ``action()`` writes under pytest's temp root or FiftyOne's
    dataset dir."""
    roots = (str(tmp_path.parent), fo.config.default_dataset_dir)
    before = set().union(*map(_files, roots))
    action()
    return set().union(*map(_files, roots)) - before


def test_pr_curve_page_is_named_by_dataset_id(tmp_path, hostile_names):
    name = hostile_names[0]
    mask = np.zeros((32, 32), bool)
    mask[4:20, 4:20] = True
    gt = fo.Detections(detections=[fo.Detection.from_mask(mask, label="ship")])
    pred = fo.Detections(detections=[fo.Detection.from_mask(mask, label="ship", confidence=0.9)])
    dataset = _one_image_dataset(tmp_path, name, gt=gt, pred=pred)
    report = {}

    def evaluate():
        report.update(evaluate_pseudo_labels(dataset, "pred", "gt", "ev", pr_curves_path=True))

    written = _written(tmp_path, evaluate)
    assert written == {report["pr_curves_file"]}
    _check_contained(name, "__diffuprompter__", written, tmp_path)


def test_heatmaps_of_a_hostile_dataset_name_stay_in_its_id_folder(tmp_path, hostile_names):
    from helpers import StubModel

    from diffuprompter_plugin.labelling import compute_pseudo_labels

    dataset = _one_image_dataset(tmp_path, hostile_names[2])
    written = _written(
        tmp_path, partial(compute_pseudo_labels, dataset, "dp", ["ship"], model=StubModel())
    )
    folder = os.path.join(fo.config.default_dataset_dir, "__diffuprompter__", str(dataset._doc.id))
    assert len(written) == 1 and all(f.startswith(folder + os.sep) for f in written)
