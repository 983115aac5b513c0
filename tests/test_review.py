"""The review loop through the SDK: verdict tags in, status out, automatic
acceptance that leaves a person's verdicts alone, review views, and the
refusal to re-threshold over verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from fiftyone import ViewField as F
from helpers import TINY_CONFIG, EchoPrompter, StubModel
from reviewed import SIZE, edit, ids_by_quality, reviewed_dataset, tag

from diffuprompter_plugin.labelling import compute_pseudo_labels
from diffuprompter_plugin.rethreshold import rethreshold_pseudo_labels
from diffuprompter_plugin.review import accept_pseudo_labels, review_status, review_view
from diffuprompter_plugin.verdicts import check_no_verdicts


@pytest.fixture
def dataset(tmp_path):
    dataset = reviewed_dataset(str(tmp_path))
    yield dataset
    dataset.delete()


def _rows(status):
    return {r["class"]: r for r in status["rows"]}


def test_tags_in_status_counts_out(dataset):
    labels = ids_by_quality(dataset)  # 12 labels: 6 ship, 6 tank
    ships = [i for _, c, i in labels if c == "ship"]
    tanks = [i for _, c, i in labels if c == "tank"]
    tag(dataset, ships[:3], "accepted")
    tag(dataset, ships[3:4], "rejected")
    tag(dataset, tanks[:1], "accepted")
    tag(dataset, tanks[1:2], "accepted")
    tag(dataset, tanks[1:2], "rejected")  # both: conflicting

    rows = _rows(review_status(dataset, "dp"))
    assert rows["ship"] == {
        "class": "ship", "labels": 6, "unreviewed": 2, "accepted": 3, "rejected": 1,
        "auto_accepted": 0, "auto_rejected": 0, "conflicting": 0, "edited": 0,
        "precision": 0.75,
    }  # fmt: skip
    assert (rows["tank"]["accepted"], rows["tank"]["conflicting"]) == (1, 1)
    assert rows["tank"]["precision"] == 1.0 and rows["tank"]["unreviewed"] == 4
    assert rows["all"]["labels"] == 12 and rows["all"]["unreviewed"] == 6
    assert rows["all"]["precision"] == 0.8  # 4 of 5 person verdicts


def test_accept_leaves_a_persons_verdicts_alone(dataset):
    labels = ids_by_quality(dataset)
    best, worst = labels[-1], labels[0]
    tag(dataset, [best[2]], "rejected")  # a person rejects the best label
    tag(dataset, [worst[2]], "accepted")  # and accepts the worst
    out = accept_pseudo_labels(dataset, "dp", min_quality=0.6, reject_below=0.2)

    above = [i for q, _, i in labels if q >= 0.6 and i != best[2]]
    below = [i for q, _, i in labels if q < 0.2 and i != worst[2]]
    assert out["accepted"] == len(above) and out["rejected"] == len(below)
    assert out["unreviewed"] == 12 - 2 - len(above) - len(below)
    tags = dict(zip(*[[v for r in dataset.values(f"dp.detections.{k}") for v in r]
                      for k in ("id", "tags")], strict=True))  # fmt: skip
    assert tags[best[2]] == ["rejected"] and tags[worst[2]] == ["accepted"]
    assert all(tags[i] == ["accepted", "auto_accepted"] for i in above)
    assert all(tags[i] == ["rejected", "auto_rejected"] for i in below)

    again = accept_pseudo_labels(dataset, "dp", min_quality=0.0)
    assert again["accepted"] == out["unreviewed"]  # only the rest; nothing re-tagged
    assert tags[best[2]] == dataset.select_labels(ids=[best[2]]).values("dp.detections.tags")[0][0]
    rows = _rows(review_status(dataset, "dp"))
    assert rows["all"]["accepted"] == 1 and rows["all"]["rejected"] == 1  # a person's
    assert rows["all"]["auto_accepted"] == len(above) + again["accepted"]
    assert rows["all"]["unreviewed"] == 0


def test_per_class_thresholds_and_bad_values(dataset):
    labels = ids_by_quality(dataset)
    out = accept_pseudo_labels(dataset, "dp", thresholds={"ship": 0.5}, min_quality=0.9)
    ships = [q for q, c, _ in labels if c == "ship" and q >= 0.5]
    tanks = [q for q, c, _ in labels if c == "tank" and q >= 0.9]
    assert out["per_class"] == {
        "ship": {"accepted": len(ships), "rejected": 0},
        "tank": {"accepted": len(tanks), "rejected": 0},
    }
    assert len(ships) == 3 and len(tanks) == 1
    with pytest.raises(ValueError, match="reject_below"):
        accept_pseudo_labels(dataset, "dp", min_quality=0.3, reject_below=0.5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], not 1.5"):
        accept_pseudo_labels(dataset, "dp", min_quality=1.5)
    with pytest.raises(ValueError, match="Give min_quality"):
        accept_pseudo_labels(dataset, "dp")
    with pytest.raises(ValueError, match="Field 'nope' does not exist"):
        accept_pseudo_labels(dataset, "nope", min_quality=0.5)


def test_worst_first_on_samples_and_patches(dataset):
    labels = ids_by_quality(dataset)
    tag(dataset, [labels[0][2]], "rejected")  # the worst is done
    view = review_view(dataset, "dp")
    assert view.count("dp.detections") == 11
    lowest = [min(qs) for qs in view.values("dp.detections.quality")]
    assert lowest == sorted(lowest) and lowest[0] == labels[1][0]

    patches = review_view(dataset, "dp", patches=True, classes=["tank"])
    qualities = patches.values("dp.quality")
    tanks = sorted(q for q, c, _ in labels if c == "tank")
    assert qualities == tanks and len(patches) == 6
    again = review_view(dataset.to_patches("dp"), "dp")  # a patches view as input
    assert again.values("dp.quality") == [q for q, _, _ in labels[1:]]


def test_calibration_sample_is_stratified_and_seeded(dataset):
    tag(dataset, [ids_by_quality(dataset)[-1][2]], "accepted")
    view = review_view(dataset, "dp", order="calibration", size=4, bins=2, seed=7)
    drawn = [i for row in view.values("dp.detections.id") for i in row]
    assert len(drawn) == 8 and len(set(drawn)) == 8  # 4 per class
    assert view.count_values("dp.detections.label") == {"ship": 4, "tank": 4}
    same = review_view(dataset, "dp", order="calibration", size=4, bins=2, seed=7)
    assert [i for row in same.values("dp.detections.id") for i in row] == drawn
    for name in ("ship", "tank"):  # 2 from each half of the class's quality range
        quality = sorted(q for q, c, _ in ids_by_quality(dataset) if c == name)
        median = quality[len(quality) // 2]
        drawn_q = [
            q
            for row_q, row_l in zip(
                view.values("dp.detections.quality"), view.values("dp.detections.label"),
                strict=True,
            )
            for q, c in zip(row_q, row_l, strict=True)
            if c == name
        ]  # fmt: skip
        assert sum(q >= median for q in drawn_q) == 2
    patches = review_view(dataset, "dp", order="calibration", size=3, patches=True, seed=1)
    assert len(patches) == 6 and patches.count_values("dp.label") == {"ship": 3, "tank": 3}


def test_rethreshold_into_a_reviewed_field_is_refused(image_dataset):
    compute_pseudo_labels(image_dataset, "dp", classes=["ship"], model=StubModel())
    echo = EchoPrompter(TINY_CONFIG)
    rethreshold_pseudo_labels(image_dataset, "dp", "dp_strict", thresholds=0.5, prompter=echo)
    first = image_dataset.values("dp_strict.detections.id")
    image_dataset.limit(2).tag_labels(["accepted"], label_fields=["dp_strict"])
    image_dataset.skip(3).tag_labels(["rejected"], label_fields=["dp_strict"])
    message = r"Field 'dp_strict' holds reviewed labels \(4 accepted, 4 rejected of 11\)"
    with pytest.raises(ValueError, match=message):
        check_no_verdicts(image_dataset, "dp_strict")
    with pytest.raises(ValueError, match=message):
        rethreshold_pseudo_labels(image_dataset, "dp", "dp_strict", 0.6, prompter=echo)
    assert image_dataset.values("dp_strict.detections.id") == first  # untouched
    assert image_dataset.count_label_tags() == {"accepted": 4, "rejected": 4}
    out = rethreshold_pseudo_labels(image_dataset, "dp", "dp_new", 0.5, prompter=echo)
    assert out["instances"] == 11  # the run's settings (DenseCRF on), not the prompter's
    assert image_dataset.count_label_tags(label_fields=["dp_new"]) == {}  # no verdicts
    check_no_verdicts(image_dataset, "dp_new")  # a fresh field passes


def test_a_run_lets_a_person_fix_its_labels_in_the_apps_annotate_tab(image_dataset):
    compute_pseudo_labels(image_dataset, "dp", classes=["storage tank", "ship"], model=StubModel())
    schema = image_dataset.label_schemas["dp_instances"]
    assert (schema["type"], schema["component"]) == ("detections", "dropdown")
    assert schema["classes"] == ["ship", "storage tank"]  # the run's classes
    assert "dp_instances" in image_dataset.active_label_schemas
    mine = {**schema, "classes": ["ship", "storage tank", "oil tank"]}
    image_dataset.update_label_schema("dp_strict", mine, allow_new_fields=True)
    echo = EchoPrompter(TINY_CONFIG)
    rethreshold_pseudo_labels(image_dataset, "dp", "dp_strict", thresholds=0.5, prompter=echo)
    assert image_dataset.label_schemas["dp_strict"]["classes"][-1] == "oil tank"  # theirs kept


def test_accept_on_a_patches_view_and_labels_without_quality(dataset):
    from diffuprompter_plugin.calibration import calibrate_acceptance

    patches = dataset.to_patches("dp")
    out = accept_pseudo_labels(patches, "dp", min_quality=0.9)
    assert out["accepted"] == 1  # 0.95 only; the tag lands on the dataset's label
    assert dataset.count_label_tags() == {"accepted": 1, "auto_accepted": 1}

    old = dataset.clone()  # a run made before the signals: no quality at all
    try:
        for sample in old.iter_samples(autosave=True):
            for det in sample.dp.detections:
                det.quality = None
        before = review_status(old, "dp")["rows"][-1]["unreviewed"]
        assert accept_pseudo_labels(old, "dp", min_quality=0.0)["accepted"] == 0
        assert review_status(old, "dp")["rows"][-1]["unreviewed"] == before == 11
        with pytest.raises(ValueError, match="No label of 'dp' has a 'quality'"):
            calibrate_acceptance(old, "dp")
        assert len(review_view(old, "dp")) == 3  # still reviewable, worst first unknown
    finally:
        old.delete()


def test_a_label_a_person_edited_is_that_persons_work(dataset):
    from diffuprompter_plugin.export import training_view
    from diffuprompter_plugin.verdicts import LabelTable

    labels = ids_by_quality(dataset)
    (_, cls, best), (_, _, worst) = labels[-1], labels[0]
    edit(dataset, best, label="tank" if cls == "ship" else "ship")  # a class fixed

    def box_of(label_id):
        view = dataset.select_labels(ids=[label_id], fields="dp")
        return view.values("dp.detections.bounding_box")[0][0]

    edit(dataset, worst, bounding_box=[v + 3 / SIZE for v in box_of(worst)])  # moved 3 px
    x, y, w, h = box_of(labels[1][2])  # a box one pixel smaller, as CVAT gives it back
    edit(dataset, labels[1][2], bounding_box=[x, y, w - 1 / SIZE, h - 1 / SIZE])
    x, y, w, h = box_of(labels[2][2])  # each edge 1 px out: not an edit
    edit(dataset, labels[2][2], bounding_box=[x - 1 / SIZE, y, w + 2 / SIZE, h])
    moved = labels[3][2]  # 1 px right, 1 px wider: the right edge moved 2 px
    x, y, w, h = box_of(moved)
    edit(dataset, moved, bounding_box=[x + 1 / SIZE, y, w + 1 / SIZE, h])
    person = {best, worst, moved}
    out = accept_pseudo_labels(dataset, "dp", min_quality=0.6, reject_below=0.2)
    tags = dict(zip(*[[v for r in dataset.values(f"dp.detections.{k}") for v in r]
                      for k in ("id", "tags")], strict=True))  # fmt: skip
    assert all(tags[i] == [] for i in person)  # left to the person
    above = [i for q, _, i in labels if q >= 0.6 and i not in person]
    below = [i for q, _, i in labels if q < 0.2 and i not in person]
    assert (out["accepted"], out["rejected"]) == (len(above), len(below))
    assert out["unreviewed"] == 12 - len(above) - len(below)  # the edited three among them

    table = LabelTable.read(dataset, "dp")
    assert set(table.ids[table.edited]) == person
    assert np.isnan(table.quality[table.edited]).all()  # calibration does not count them
    tag(dataset, [best], "rejected")  # a person's verdict on their own label
    rows = _rows(review_status(dataset, "dp"))
    assert rows["all"]["edited"] == 3 and rows["all"]["rejected"] == 1
    assert rows["all"]["precision"] is None  # no verdict on a label as the run drew it
    kept = training_view(dataset, "dp", 0.9).values("dp.detections.id")
    assert worst in {i for row in kept for i in row}  # not held back by its stale quality
    fixed = below[0]  # rejected automatically, then fixed by a person
    fixed_class = next(c for _, c, i in labels if i == fixed)
    edit(dataset, fixed, label=f"{fixed_class} hull")
    for include in (0.9, "accepted+unreviewed"):
        kept = training_view(dataset, "dp", include).values("dp.detections.id")
        assert fixed in {i for row in kept for i in row}  # the rejection was the run's
    edit(dataset, fixed, label=fixed_class)  # undone: the counts below are as before
    counts = f"{len(above)} accepted, {len(below) + 1} rejected, 3 edited or added by a person"
    with pytest.raises(ValueError, match=rf"'dp' holds reviewed labels \({counts} of 12\)"):
        check_no_verdicts(dataset, "dp")  # re-thresholding would write over them

    from diffuprompter_plugin.calibration import calibrate_acceptance

    renamed = dataset.clone()  # a person renamed every class: nothing left to calibrate
    try:
        for sample in renamed.iter_samples(autosave=True):
            for det in sample.dp.detections:
                det.label = f"{det.drawn_label} hull"
        with pytest.raises(
            ValueError, match="Every label of 'dp' was edited or added by a person"
        ):
            calibrate_acceptance(renamed, "dp")
    finally:
        renamed.delete()


def test_a_label_a_person_added_is_that_persons_work(dataset):
    import fiftyone as fo

    from diffuprompter_plugin.export import training_view
    from diffuprompter_plugin.verdicts import LabelTable

    drawn = [i for _, _, i in ids_by_quality(dataset)]
    sample = dataset.last()  # a missed ship drawn in CVAT: no quality, no drawn_label
    added = fo.Detection(label="ship", bounding_box=[0.5, 0.5, 0.2, 0.2])
    sample.dp.detections.append(added)
    sample.save()

    table = LabelTable.read(dataset, "dp")
    assert list(table.ids[table.edited]) == [added.id]
    assert review_view(dataset, "dp").first().id == sample.id  # its sample comes first
    kept = training_view(dataset, "dp", 0.99).values("dp.detections.id")
    kept = {i for row in kept for i in row}
    assert kept == {added.id}  # a quality threshold keeps it; no run's label passes 0.99
    edit(dataset, drawn[-1], label="oil tank")  # and the best one a person renamed
    patches = review_view(dataset, "dp", patches=True)
    assert set(patches.values("dp.id")[:2]) == {added.id, drawn[-1]}  # no quality: first
    tag(dataset, [added.id], "accepted")
    tag(dataset, drawn[:1], "rejected")
    rows = _rows(review_status(dataset, "dp"))
    assert (rows["all"]["edited"], rows["all"]["accepted"], rows["all"]["rejected"]) == (2, 1, 1)
    assert rows["all"]["precision"] == 0.0  # the person's own label is not the run's
    with pytest.raises(ValueError, match=r"2 edited or added by a person of 13"):
        check_no_verdicts(dataset, "dp")  # re-thresholding would lose it
    alone = dataset.select(sample.id)  # a view without the run's labels but that one
    alone = alone.filter_labels("dp", F("drawn_label").exists(False))
    assert _rows(review_status(alone, "dp"))["all"]["edited"] == 1
    assert _rows(review_status(alone.to_patches("dp"), "dp"))["all"]["edited"] == 1
    with pytest.raises(ValueError, match=r"1 edited or added by a person of 1"):
        check_no_verdicts(alone, "dp")

    copied = fo.Detection(label="ship", bounding_box=[0.1, 0.5, 0.2, 0.2], quality=0.99)
    sample.dp.detections.append(copied)  # added with a quality copied from elsewhere
    sample.save()
    out = accept_pseudo_labels(dataset, "dp", min_quality=0.95)
    assert out["accepted"] == 0  # the 0.99 is the person's, the run's 0.95 they renamed

    old = dataset.clone()  # a run made before runs recorded what they drew
    try:
        for sample in old.iter_samples(autosave=True):
            for det in sample.dp.detections:
                det.drawn_label = None
        assert not LabelTable.read(old, "dp").edited.any()  # nothing reads as added
    finally:
        old.delete()


def test_bad_arguments_name_the_value(dataset):
    from diffuprompter_plugin.calibration import calibrate_acceptance

    with pytest.raises(ValueError, match=r"class 'Ship' named in thresholds \(its classes: "):
        accept_pseudo_labels(dataset, "dp", thresholds={"Ship": 0.5})
    with pytest.raises(ValueError, match=r"min_quality must be a number in \[0, 1\], not '0.5'"):
        accept_pseudo_labels(dataset, "dp", min_quality="0.5")
    with pytest.raises(ValueError, match="classes must be a list of class names, not the string"):
        review_view(dataset, "dp", classes="ship")
    with pytest.raises(ValueError, match="class 'Ship' named in classes"):
        review_view(dataset, "dp", classes=["Ship"])
    with pytest.raises(ValueError, match="bins and size must be at least 1, not 0 and 60"):
        review_view(dataset, "dp", order="calibration", bins=0)
    with pytest.raises(ValueError, match="class 'Ship' named in classes"):
        calibrate_acceptance(dataset, "dp", classes=["Ship"])
    assert dataset.count_label_tags() == {}  # nothing was tagged
    tanks = dataset.filter_labels("dp", F("label") == "tank")  # a class the view lacks passes
    assert accept_pseudo_labels(tanks, "dp", thresholds={"ship": 0.5, "tank": 0.9})["accepted"]
