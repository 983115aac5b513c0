"""Importers, on fixtures generated in each collection's on-disk layout."""

from __future__ import annotations

import json
import os

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from diffuprompter_plugin.importers import (
    AnnotationError,
    import_classification_collection,
    import_dlr_munich,
    import_isaid,
    import_nwpu_vhr10,
)
from diffuprompter_plugin.importers.categories import COLLECTIONS
from diffuprompter_plugin.importers.common import (
    ImportReport,
    image_metadata,
    new_files,
    windows,
)


def _image(path, size=(40, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)


def test_windows_shift_edge_patches_inside():
    assert windows(1000, 600, 512, 0) == [
        (0, 0, 512, 512),
        (488, 0, 1000, 512),
        (0, 88, 512, 600),
        (488, 88, 1000, 600),
    ]
    assert windows(300, 200, 512, 0) == [(0, 0, 300, 200)]
    assert [w[0] for w in windows(1200, 512, 512, 128)] == [0, 384, 688]
    with pytest.raises(ValueError, match="overlap 512"):
        windows(1000, 1000, 512, 512)


def test_new_files_skip_imported_and_unreadable_files_counting_each(tmp_path):
    for name in ("a.png", "b.png", "d.png"):
        _image(tmp_path / name, (8 + len(name), 6))
    (tmp_path / "c.png").write_bytes(b"broken")
    items = [("A", tmp_path / n) for n in ("a.png", "b.png", "c.png", "d.png")]
    report = ImportReport("ds")
    new = list(
        new_files(items, lambda i: i[1], image_metadata, {str(tmp_path / "b.png")}, report, False)
    )
    assert [(item[0], meta.width, meta.height) for item, meta in new] == [
        ("A", 13, 6),
        ("A", 13, 6),
    ]
    assert [item[1].name for item, _ in new] == ["a.png", "d.png"]
    assert report.existing == 1
    assert [(p, "not a readable image" in r) for p, r in report.skipped] == [
        (str(tmp_path / "c.png"), True)
    ]


OPTIMAL_31 = {
    "airplane": ("airplane", False),
    "baseball_diamond": ("baseball diamond", False),
    "basketball_court": ("basketball court", False),
    "bridge": ("bridge", False),
    "ground_track_field": ("ground track field", False),
    "harbor": ("harbor", False),
    "roundabout": ("roundabout", False),
    "parking_lot": ("vehicle", True),
    "overpass": ("bridge", True),
}
"""OPTIMAL-31's mapped folders; its 22 other folders map onto nothing."""


def test_optimal_31_and_resisc45_share_one_folder_table():
    folders = [
        "airplane",
        "airport",
        "baseball_diamond",
        "basketball_court",
        "beach",
        "bridge",
        "chaparral",
        "church",
        "circular_farmland",
        "commercial_area",
        "dense_residential",
        "desert",
        "forest",
        "freeway",
        "golf_course",
        "ground_track_field",
        "harbor",
        "industrial_area",
        "intersection",
        "island",
        "lake",
        "meadow",
        "medium_residential",
        "mobile_home_park",
        "mountain",
        "overpass",
        "parking_lot",
        "railway",
        "rectangular_farmland",
        "roundabout",
        "runway",
    ]
    assert len(folders) == 31
    optimal, resisc = COLLECTIONS["OPTIMAL-31"], COLLECTIONS["NWPU-RESISC45"]
    mapped = {f: optimal.category(f, True) for f in folders if optimal.category(f, True)[0]}
    assert mapped == OPTIMAL_31
    assert all(optimal.category(f, False) == (None, False) for f in ("parking_lot", "overpass"))
    assert (optimal.direct, optimal.candidate) == (resisc.direct, resisc.candidate)
    assert resisc.category("storage_tank", False) == ("storage tank", False)


def test_uc_merced_layout_maps_folders_and_keeps_sources(tmp_path, dataset_name):
    root = tmp_path / "UCMerced_LandUse"
    _image(root / "Images" / "storagetanks" / "storagetanks00.tif", (256, 249))
    _image(root / "Images" / "storagetanks" / "storagetanks01.tif", (247, 247))
    _image(root / "Images" / "airplane" / "airplane00.tif")
    _image(root / "Images" / "parkinglot" / "parkinglot00.tif")
    _image(root / "Images" / "forest" / "forest00.tif")
    report = import_classification_collection(root, dataset_name)
    assert (report.added, report.skipped) == (3, [])
    ds = fo.load_dataset(dataset_name)
    assert ds.persistent
    assert ds.count_values("ground_truth.label") == {"storage tank": 2, "airplane": 1}
    assert set(ds.distinct("source_class")) == {"storagetanks", "airplane"}
    assert ds.distinct("source_collection") == ["UC Merced"]
    assert sorted(ds.values("metadata.width")) == [40, 247, 256]


def test_candidates_are_opt_in(tmp_path, dataset_name):
    root = tmp_path / "NWPU-RESISC45"
    _image(root / "parking_lot" / "parking_lot_001.jpg")
    _image(root / "ship" / "ship_001.jpg")
    import_classification_collection(root, dataset_name, include_candidates=True)
    ds = fo.load_dataset(dataset_name)
    assert dict(zip(ds.values("source_class"), ds.values("mapping"), strict=True)) == {
        "parking_lot": "candidate",
        "ship": "direct",
    }
    assert ds.count_values("ground_truth.label") == {"vehicle": 1, "ship": 1}


def test_mixed_case_folders_merge_and_reimport_is_idempotent(tmp_path, dataset_name):
    aid = tmp_path / "AID"
    _image(aid / "StorageTanks" / "storagetanks_1.jpg", (61, 45))
    _image(aid / "Playground" / "playground_1.png")
    clrs = tmp_path / "CLRS"
    _image(clrs / "storage-tank" / "storage-tank_1_Level2_0.84m.tif")
    _image(clrs / "Port" / "port_7_Level1_1.2m.tif")
    assert import_classification_collection(aid, dataset_name).added == 2
    assert import_classification_collection(clrs, dataset_name).added == 2
    again = import_classification_collection(aid, dataset_name)
    assert (again.added, again.existing) == (0, 2)
    ds = fo.load_dataset(dataset_name)
    assert len(ds) == 4
    assert ds.count_values("ground_truth.label") == {
        "storage tank": 2,
        "ground track field": 1,
        "harbor": 1,
    }
    assert ds.count_values("source_collection") == {"AID": 2, "CLRS": 2}


def test_renamed_root_needs_collection_name(tmp_path, dataset_name):
    root = tmp_path / "my_download"
    _image(root / "images" / "swimming_pool" / "swimming_pool001.jpg")
    with pytest.raises(ValueError, match="Cannot tell which collection"):
        import_classification_collection(root, dataset_name)
    report = import_classification_collection(root, dataset_name, collection="PatternNet")
    assert report.added == 1
    assert fo.load_dataset(dataset_name).first().ground_truth.label == "swimming pool"


def test_unreadable_image_is_reported_not_fatal(tmp_path, dataset_name):
    root = tmp_path / "OPTIMAL-31"
    _image(root / "Images" / "roundabout" / "roundabout_1.jpg")
    bad = root / "Images" / "roundabout" / "roundabout_2.jpg"
    bad.write_bytes(b"\x00broken")
    report = import_classification_collection(root, dataset_name)
    assert report.added == 1
    assert len(report.skipped) == 1 and report.skipped[0][0].endswith("roundabout_2.jpg")


def test_unknown_collection_and_missing_folder(tmp_path, dataset_name):
    with pytest.raises(ValueError, match="does not exist"):
        import_classification_collection(tmp_path / "nope", dataset_name)
    (tmp_path / "RSSCN7").mkdir()
    with pytest.raises(ValueError, match="Unknown collection 'Foo'"):
        import_classification_collection(tmp_path / "RSSCN7", dataset_name, collection="Foo")
    with pytest.raises(ValueError, match="has no class folders"):
        import_classification_collection(tmp_path / "RSSCN7", dataset_name)
    assert not fo.dataset_exists(dataset_name)


def _isaid_fixture(root, category_ids):
    """Two DOTA-style images; category ids as in a released JSON."""
    _image(root / "val" / "images" / "P0001.png", (700, 300))
    _image(root / "val" / "images" / "P0002.png", (100, 80))
    cats = [{"id": i, "name": n} for n, i in category_ids.items()]
    square = [10, 10, 30, 10, 30, 30, 10, 30]  # 20 x 20 at (10, 10)
    straddle = [500, 100, 540, 100, 540, 120, 500, 120]  # crosses x = 512
    sliver = [186, 200, 188, 200, 188, 201, 186, 201]  # 3 x 2 px once filled
    anns = [
        {
            "id": 1,
            "image_id": 0,
            "category_id": category_ids["plane"],
            "segmentation": [square],
            "bbox": [10, 10, 20, 20],
            "iscrowd": 0,
            "area": 400,
        },
        {
            "id": 2,
            "image_id": 0,
            "category_id": category_ids["Small_Vehicle"],
            "segmentation": [straddle],
            "bbox": [500, 100, 40, 20],
            "iscrowd": 0,
            "area": 800,
        },
        {
            "id": 3,
            "image_id": 0,
            "category_id": category_ids["ship"],
            "segmentation": [sliver],
            "bbox": [186, 200, 4, 2],
            "iscrowd": 0,
            "area": 8,
        },
    ]
    data = {
        "images": [
            {"id": 0, "file_name": "P0001.png", "width": 700, "height": 300},
            {"id": 1, "file_name": "P0002.png", "width": 100, "height": 80},
            {"id": 2, "file_name": "P0003.png", "width": 10, "height": 10},
        ],
        "annotations": anns,
        "categories": cats,
    }
    path = root / "val" / "Annotations" / "iSAID_val.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    return path


def test_isaid_patches_clip_instances_by_category_name(tmp_path, dataset_name):
    ids = {"storage_tank": 1, "Small_Vehicle": 3, "plane": 4, "ship": 5}  # train-JSON order
    _isaid_fixture(tmp_path / "iSAID", ids)
    report = import_isaid(
        tmp_path / "iSAID", "val", name=dataset_name, patch_dir=tmp_path / "patches"
    )
    assert report.added == 3  # P0001: 2 patches (edge shifted), P0002 whole
    assert [p for p, _ in report.skipped] == [str(tmp_path / "iSAID/val/images/P0003.png")]
    ds = fo.load_dataset(dataset_name)
    offsets = sorted(tuple(o) for o in ds.values("offset"))
    assert offsets == [(0, 0), (0, 0), (188, 0)]
    first = (
        ds.match(fo.ViewField("offset") == [0, 0])
        .match(fo.ViewField("source_size") == [700, 300])
        .first()
    )
    assert first.metadata.width == 512 and first.metadata.height == 300
    dets = {d.label: d for d in first.gt_masks.detections}
    assert set(dets) == {"plane", "Small_Vehicle"}  # the 8-px ship sliver is dropped
    assert dets["plane"].area == 400  # pycocotools' 20 x 20 (cv2.fillPoly gave 21 x 21)
    assert dets["Small_Vehicle"].mask.shape == (20, 12)  # clipped at x = 512
    shifted = ds.match(fo.ViewField("offset") == [188, 0]).first()
    (vehicle,) = shifted.gt_masks.detections
    assert vehicle.area == 40 * 20 and vehicle.bounding_box[0] == pytest.approx(312 / 512)
    assert ds.info["max_dets"] == 1000  # the devkit's evaluation convention
    assert os.path.isfile(shifted.filepath)
    assert shifted.source_image.endswith("P0001.png")


def test_isaid_bad_json_names_the_file(tmp_path, dataset_name):
    path = _isaid_fixture(tmp_path / "iSAID", {"plane": 1, "Small_Vehicle": 2, "ship": 3})
    data = json.loads(path.read_text())
    data["annotations"][0]["segmentation"] = [[1, 2, 3]]
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match="iSAID_val.json: annotation 1 has a malformed"):
        import_isaid(tmp_path / "iSAID", "val", name=dataset_name)
    path.write_text("{not json")
    with pytest.raises(AnnotationError, match="iSAID_val.json"):
        import_isaid(tmp_path / "iSAID", "val", name=dataset_name)
    assert not fo.dataset_exists(dataset_name)


def _nwpu_fixture(root, lines):
    _image(root / "positive image set" / "001.jpg", (100, 80))
    _image(root / "positive image set" / "002.jpg", (60, 50))
    _image(root / "negative image set" / "001.jpg", (70, 70))
    (root / "ground truth").mkdir(parents=True)
    (root / "ground truth" / "001.txt").write_text(lines)
    (root / "ground truth" / "002.txt").write_text("(1,2),(11,12),10\n\n")


def _nwpu_mask_json(images, image_id, category, polygon):
    """A mask JSON listing ``images`` (file, width, height) with one
    ``category`` (id, name) instance on image ``image_id``."""
    xs, ys = polygon[::2], polygon[1::2]
    box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    annotation = {"id": 1, "image_id": image_id, "category_id": category[0], "iscrowd": 0}
    annotation.update(segmentation=[polygon], bbox=box, area=box[2] * box[3])
    return {
        "images": [
            {"id": i, "file_name": f, "width": w, "height": h}
            for i, (f, w, h) in enumerate(images)
        ],
        "annotations": [annotation],
        "categories": [{"id": category[0], "name": category[1]}],
    }


def test_nwpu_boxes_masks_and_negatives(tmp_path, dataset_name):
    root = tmp_path / "NWPU VHR-10 dataset"
    _nwpu_fixture(root, "(10,20),(30,40),1\n( 5, 6),(15, 16),3  \n\n")
    images = [("001.jpg", 100, 80), ("002.jpg", 60, 50)]  # 002: listed, no objects
    coco = _nwpu_mask_json(images, 0, (3, "storage_tank"), [5, 6, 14, 6, 14, 15, 5, 15])
    (root / "annotations.json").write_text(json.dumps(coco))
    report = import_nwpu_vhr10(root, dataset_name)
    assert report.added == 3
    ds = fo.load_dataset(dataset_name)
    assert sorted(ds.values("nwpu_id")) == ["negative/001", "positive/001", "positive/002"]
    assert ds.count_sample_tags() == {"positive": 2, "negative": 1}
    pos = ds.match(fo.ViewField("nwpu_id") == "positive/001").first()
    assert [d.label for d in pos.gt_boxes.detections] == ["airplane", "storage tank"]
    assert pos.gt_boxes.detections[0].bounding_box == pytest.approx([0.1, 0.25, 0.2, 0.25])
    (mask,) = pos.gt_masks.detections
    assert (mask.label, mask.area) == ("storage tank", 81)  # pycocotools: 9 x 9 px
    neg = ds.match_tags("negative").first()
    assert neg.gt_boxes.detections == [] and neg.gt_masks.detections == []
    empty = ds.match(fo.ViewField("nwpu_id") == "positive/002").first()
    assert empty.gt_masks.detections == []


def test_nwpu_malformed_line_names_file_and_line(tmp_path, dataset_name):
    root = tmp_path / "NWPU VHR-10 dataset"
    _nwpu_fixture(root, "(10,20),(30,40),1\n(10,20),(30),2\n")
    with pytest.raises(AnnotationError, match=r"001.txt:2: malformed box line"):
        import_nwpu_vhr10(root, dataset_name)
    assert not fo.dataset_exists(dataset_name)


def test_dlr_frames_are_tiled_around_vehicles(tmp_path, dataset_name):
    root = tmp_path / "MunichDatasetVehicleDetection-2015-old"
    _image(root / "2012-04-26-Muenchen-Tunnel_4K0G0010.JPG", (200, 100))
    (root / "2012-04-26-Muenchen-Tunnel_4K0G0010_pkw.samp").write_text(
        "# format: id type center.x center.y size.width size.height angle\n"
        "@ header\n1 1 30 30 6 3 0\n2 1 150 90 6 3 90\n"
    )
    _image(root / "2012-04-26-Muenchen-Tunnel_4K0G0020.JPG", (200, 120))
    report = import_dlr_munich(root, dataset_name, tile_dir=tmp_path / "tiles", tile_size=100)
    assert report.added == 2  # one tile per vehicle
    assert [p for p, _ in report.skipped] == [
        str(root / "2012-04-26-Muenchen-Tunnel_4K0G0020.JPG")
    ]
    ds = fo.load_dataset(dataset_name)
    assert ds.distinct("ground_truth.label") == ["vehicle"]
    tile = ds.match(fo.ViewField("offset") == [0, 0]).first()
    (poly,) = tile.gt_vehicles.polylines
    assert np.allclose(poly.points[0], [[0.24, 0.27], [0.36, 0.27], [0.36, 0.33], [0.24, 0.33]])


def test_isaid_full_scenes_evaluate_like_patches(tmp_path, dataset_name):
    from diffuprompter_plugin.evaluation import evaluate_pseudo_labels

    ids = {"plane": 1, "Small_Vehicle": 2, "ship": 3}
    _isaid_fixture(tmp_path / "iSAID", ids)
    report = import_isaid(tmp_path / "iSAID", "val", name=dataset_name, patch_size=None)
    assert report.added == 2 and not list(tmp_path.glob("**/*_0_0_*.png"))
    scenes = fo.load_dataset(dataset_name)
    scene = scenes.match(fo.ViewField("source_size") == [700, 300]).first()
    assert scene.filepath == str(tmp_path / "iSAID/val/images/P0001.png")
    assert (scene.metadata.width, scene.metadata.height, scene.offset) == (700, 300, [0, 0])
    vehicle = next(d for d in scene.gt_masks.detections if d.label == "Small_Vehicle")
    assert vehicle.mask.shape == (20, 40) and vehicle.area == 40 * 20  # not cut at x = 512
    assert vehicle.bounding_box[0] == pytest.approx(500 / 700)

    patches_name = f"{dataset_name}-patches"
    import_isaid(
        tmp_path / "iSAID", "val", name=patches_name, patch_dir=tmp_path / "patches", overlap=100
    )
    patches = fo.load_dataset(patches_name)
    try:
        for dataset in (scenes, patches):
            for sample in dataset:
                sample["pred"] = sample.gt_masks.copy()
                for det in sample.pred.detections:
                    det.confidence = 0.9
                sample.save()
            same = {"plane": "plane", "Small_Vehicle": "Small_Vehicle"}
            result = evaluate_pseudo_labels(dataset, "pred", "gt_masks", "exact", same)
            assert result["pycocotools"]["AP"] == pytest.approx(1.0) and result["agree"]
    finally:
        patches.delete()


def test_rsd46_train_test_folders_are_recognised(tmp_path, dataset_name):
    root = tmp_path / "RSD46-WHU"
    _image(root / "train" / "Oil tank" / "oil_1.jpg")
    _image(root / "train" / "Dock" / "dock_1.jpg")
    _image(root / "test" / "Oil tank" / "oil_9.jpg")
    _image(root / "test" / "Water" / "water_1.jpg")
    report = import_classification_collection(root, dataset_name)
    assert report.added == 3
    ds = fo.load_dataset(dataset_name)
    assert ds.count_values("split") == {"train": 2, "test": 1}
    assert ds.count_values("ground_truth.label") == {"storage tank": 2, "harbor": 1}


def test_importing_nothing_from_a_folder_says_why(tmp_path, dataset_name):
    root = tmp_path / "RSSCN7"
    _image(root / "aGrass" / "a001.jpg")
    _image(root / "gParking" / "g001.jpg")
    with pytest.raises(ValueError, match=r"No folder .* maps onto a target category .*"):
        import_classification_collection(root, dataset_name)
    with pytest.raises(ValueError, match="include_candidates=True"):
        import_classification_collection(root, dataset_name)
    empty = tmp_path / "AID"
    (empty / "Bridge").mkdir(parents=True)
    (empty / "Bridge" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"hold no images: .*Bridge"):
        import_classification_collection(empty, dataset_name)
    assert not fo.dataset_exists(dataset_name)


def test_nwpu_split_json_leaves_out_positives_it_does_not_list(tmp_path, dataset_name):
    root = tmp_path / "NWPU VHR-10 dataset"
    _nwpu_fixture(root, "(10,20),(30,40),1\n")
    val = _nwpu_mask_json([("002.jpg", 60, 50)], 0, (10, "vehicle"), [1, 2, 11, 2, 11, 12, 1, 12])
    split = tmp_path / "NWPU_instances_val.json"
    split.write_text(json.dumps(val))
    report = import_nwpu_vhr10(root, dataset_name, coco_json=split)
    assert report.added == 2
    assert report.skipped == [
        (str(root / "positive image set" / "001.jpg"), f"not in the mask JSON {split}")
    ]
    ds = fo.load_dataset(dataset_name)
    assert sorted(ds.values("nwpu_id")) == ["negative/001", "positive/002"]
    pos = ds.match_tags("positive").first()
    assert [(d.label, d.area) for d in pos.gt_masks.detections] == [("vehicle", 100)]


def test_masks_equal_pycocotools_decoding_of_real_shapes(tmp_path, dataset_name):
    from pycocotools.coco import COCO
    from real_shapes import IMAGES, coco_json

    from diffuprompter_plugin.coco import full_mask

    gt = coco_json()
    root = tmp_path / "iSAID"
    for name, size in IMAGES.items():
        _image(root / "val" / "images" / name, size)
    path = root / "val" / "Annotations" / "iSAID_val.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(gt))
    import_isaid(root, "val", name=dataset_name, patch_dir=tmp_path / "p", patch_size=64)
    coco = COCO(str(path))
    files = {im["file_name"]: im["id"] for im in gt["images"]}
    ds = fo.load_dataset(dataset_name)
    compared = 0
    for sample in ds:
        x0, y0 = sample.offset
        width, height = sample.metadata.width, sample.metadata.height
        by_id = {d.source_id: d for d in sample.gt_masks.detections}
        image_id = files[os.path.basename(sample.source_image)]
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            truth = coco.annToMask(ann).astype(bool)[y0 : y0 + height, x0 : x0 + width]
            if truth.sum() < 10:  # import_isaid's min_area
                assert ann["id"] not in by_id
                continue
            mask = full_mask(by_id[ann["id"]], width, height)
            np.testing.assert_array_equal(mask, truth)
            compared += 1
    assert compared > 30  # every shape, cut by 64-px patches
