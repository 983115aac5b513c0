"""A person's verdict on a pseudo-label, kept as FiftyOne label tags.

A label is *accepted* or *rejected* when it carries the label tag
``accepted`` or ``rejected``: the tags the App's own label tagging writes
(select labels, then the tag button). The library reads and writes the same
tags. An automatic step (:func:`~.review.accept_pseudo_labels`) adds a
marker tag beside its verdict (``auto_accepted`` or ``auto_rejected``), so
that a person's verdicts, which calibration counts, are told apart from the
automatic ones, which it must not count. A verdict is a person's unless its
marker matches it: a person who turns an automatically accepted label into a
rejected one in the App has made a verdict of their own.

No automatic step changes a label that has a verdict; a label tagged both
``accepted`` and ``rejected`` is *conflicting*: never exported, never
counted, and left for a person to settle.

A label whose class or box a person changed (in the App's Annotate tab, in
CVAT or Label Studio through ``annotate()``, or in Python) is *edited*: it
differs from what the run drew (``drawn_label``, ``drawn_box``). A label the
run did not draw at all (no ``drawn_label`` in a field whose run records
it) is one a person *added*. Both are that person's work
(:func:`person_made`), which no run ``quality`` describes: automatic
verdicts leave it alone, calibration does not count it, a quality threshold
does not hold it back from an export, and re-thresholding does not write
over it. A change of the mask alone, within the same box, is not seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from .labels import label_type

ACCEPTED = "accepted"
REJECTED = "rejected"
VERDICTS = (ACCEPTED, REJECTED)
AUTO_ACCEPTED = "auto_accepted"
AUTO_REJECTED = "auto_rejected"

UNREVIEWED, PERSON_ACCEPTED, PERSON_REJECTED, AUTO_ACCEPT, AUTO_REJECT, CONFLICT = range(6)
"""Verdict codes of :class:`LabelTable` ``verdict``."""

VERDICT_NAMES = {
    UNREVIEWED: "unreviewed",
    PERSON_ACCEPTED: "accepted",
    PERSON_REJECTED: "rejected",
    AUTO_ACCEPT: "auto_accepted",
    AUTO_REJECT: "auto_rejected",
    CONFLICT: "conflicting",
}


def has_verdict() -> Any:
    """A label filter (``filter_labels``) true for labels tagged accepted or rejected."""
    return F("tags").exists() & (F("tags").contains(list(VERDICTS)))


def unreviewed() -> Any:
    """A label filter true for labels with neither verdict tag."""
    return ~has_verdict()


EDIT_TOLERANCE_PX = 1.5
"""How far (pixels) an edge of a label's box may lie from where the run drew
it before the label counts as edited: more than float round trips, and
more than the pixel that a round trip through CVAT takes off a mask's box."""


def edited() -> Any:
    """A label filter true for labels whose class differs from what the run
    drew, or whose box edges moved more than :data:`EDIT_TOLERANCE_PX` (see
    the module notes; without image metadata, any move). Labels of runs that
    did not record what they drew are not edited."""
    box, drawn = F("bounding_box"), F("drawn_box")
    width, height = (F(f"$metadata.{side}").if_null(1e9) for side in ("width", "height"))
    shifts = []  # each edge: left, top, right, bottom, in pixels
    for start, size in ((0, width), (1, height)):
        near = box[start] - drawn[start]
        far = near + box[start + 2] - drawn[start + 2]
        shifts += [near.abs() * size, far.abs() * size]
    moved = F.any([shift > EDIT_TOLERANCE_PX for shift in shifts])
    return F("drawn_label").exists() & ((F("label") != F("drawn_label")) | moved)


def person_made(samples: Any, pred_field: str) -> Any:
    """A label filter true for a person's work in ``pred_field``: labels a
    person edited (:func:`edited`) and, where the field's run recorded what
    it drew (some label of the field, in or out of the view ``samples``, has
    ``drawn_label``), labels it did not draw, which a person added. In a
    field of a run made before runs recorded it, no label counts as added.

    Raises:
        ValueError: as :func:`labels_path`.
    """
    labels_path(samples, pred_field)
    root = samples._root_dataset  # the whole field, not the view (nor its patches)
    if root.count(f"{labels_path(root, pred_field)}.drawn_label"):
        return edited() | ~F("drawn_label").exists()
    return edited()


def enable_editing(dataset: Any, field: str, classes: Sequence[str]) -> None:
    """Lets a person fix the labels of ``field`` (a declared
    ``fo.Detections`` field) in the App's Annotate tab: sets and activates
    a label schema offering ``classes``, the run's. A schema the dataset
    already has for the field, a person's own, is kept; a FiftyOne without
    label schemas (before 1.22) is left as it is."""
    if not hasattr(dataset, "update_label_schema") or field in dataset.label_schemas:
        return
    schema = dataset.generate_label_schemas(fields=field, scan_samples=False)
    schema.update(component="dropdown", classes=sorted(classes))
    dataset.update_label_schema(field, schema)
    dataset.activate_label_schemas(field)


def person_made_ids(samples: Any, pred_field: str) -> set[str]:
    """The ids of the labels of ``pred_field`` in ``samples`` that are a
    person's work (:func:`person_made`)."""
    path = labels_path(samples, pred_field)
    person = samples.filter_labels(pred_field, person_made(samples, pred_field))
    return set(person.values(f"{path}.id", unwind=True))


def labels_path(samples: Any, pred_field: str) -> str:
    """The path of the labels of ``pred_field``: ``<field>.detections`` for a
    Detections field, ``<field>`` for the Detection field of a patches view.

    Raises:
        ValueError: the field does not exist or holds other labels, naming it.
    """
    needs = "reviews take an fo.Detections field"
    kind = label_type(samples, pred_field, needs, (fo.Detections, fo.Detection))
    return f"{pred_field}.detections" if kind is fo.Detections else pred_field


def check_classes(samples: Any, pred_field: str, classes: Any, name: str = "classes") -> list[str]:
    """``classes`` (a list of class names) as a list, each the class of some
    label of ``pred_field`` in the dataset of ``samples`` (a class absent
    from the view passes).

    Raises:
        ValueError: a single string, or a class no label has, naming it
            (``name``: what the caller calls the argument) and the
            field's classes.
    """
    if isinstance(classes, str):
        raise ValueError(f"{name} must be a list of class names, not the string {classes!r}")
    labels_path(samples, pred_field)
    root = samples._root_dataset
    known = root.distinct(f"{labels_path(root, pred_field)}.label")
    for cls in classes:
        if cls not in known:
            raise ValueError(
                f"No label of '{pred_field}' has the class {cls!r} named in {name} "
                f"(its classes: {', '.join(map(repr, known)) or 'none'})"
            )
    return list(classes)


def verdict_code(tags: list[str] | None, person: bool = False) -> int:
    """The verdict code of a label's tags (see the module notes); for a
    label that is a ``person``'s work (:func:`person_made`), an automatic
    rejection is void (the run's quality it went by no longer describes
    the label): unreviewed."""
    tags = set(tags or ())
    accepted, rejected = ACCEPTED in tags, REJECTED in tags
    if accepted and rejected:
        return CONFLICT
    if accepted:
        return AUTO_ACCEPT if AUTO_ACCEPTED in tags else PERSON_ACCEPTED
    if rejected and AUTO_REJECTED in tags:
        return UNREVIEWED if person else AUTO_REJECT
    return PERSON_REJECTED if rejected else UNREVIEWED


def verdict_name(tags: list[str] | None, person: bool = False) -> str:
    """``accepted``, ``rejected`` or ``unreviewed`` (automatic or not, as
    :func:`verdict_code` reads them), ``conflicting`` for both tags."""
    code = verdict_code(tags, person)
    return {AUTO_ACCEPT: ACCEPTED, AUTO_REJECT: REJECTED}.get(code, VERDICT_NAMES[code])


@dataclass
class LabelTable:
    """Every label of a field, flat, in collection order (N labels).

    Attributes:
        ids: label ids, (N,) str.
        labels: class names, (N,) str.
        quality: the ``quality`` attribute, (N,) float, NaN where missing
            and where the label is a person's work (no run's quality
            describes it).
        verdict: verdict codes (see :data:`VERDICT_NAMES`), (N,) int.
        edited: (N,) bool: a person's work, edited or added (see
            :func:`person_made`).
    """

    ids: np.ndarray
    labels: np.ndarray
    quality: np.ndarray
    verdict: np.ndarray
    edited: np.ndarray

    @classmethod
    def read(cls, samples: Any, pred_field: str) -> LabelTable:
        """Reads the field's labels from ``samples`` (a dataset, view or
        patches view): their values, then which are a person's work."""
        path = labels_path(samples, pred_field)
        keys = ("id", "label", "quality", "tags")
        columns = samples.values([f"{path}.{k}" for k in keys])
        if path.endswith(".detections"):  # lists per sample -> flat
            columns = [[v for row in column if row for v in row] for column in columns]
        ids, labels, quality, tags = columns
        ids = np.asarray(ids, dtype=object)
        person = person_made_ids(samples, pred_field)
        edited_labels = np.asarray([i in person for i in ids], dtype=bool)
        quality = np.asarray([np.nan if q is None else q for q in quality], dtype=float)
        quality[edited_labels] = np.nan
        return cls(
            ids=ids,
            labels=np.asarray(labels, dtype=object),
            quality=quality,
            verdict=np.asarray(
                [verdict_code(t, p) for t, p in zip(tags, edited_labels, strict=True)], dtype=int
            ),
            edited=edited_labels,
        )


def check_no_verdicts(samples: Any, field: str) -> None:
    """Refuses to overwrite a field whose labels carry verdicts or are a
    person's work (:func:`person_made`).

    Re-thresholding writes new labels; a person's accepted and rejected tags
    on the old ones, and the labels a person edited or added, would be lost. Write
    into a new field (which starts with no verdicts), or export or untag the
    verdicts first.

    Raises:
        ValueError: ``samples`` has labels in ``field`` tagged accepted or
            rejected, or edited or added by a person, naming the field and
            the counts.
    """
    if not samples.has_field(field):
        return
    try:
        path = labels_path(samples, field)
    except ValueError:
        return  # not labels: nothing a reviewer could have tagged
    tagged = samples.filter_labels(field, has_verdict()).count_label_tags(label_fields=[field])
    counts = {t: tagged.get(t, 0) for t in VERDICTS if tagged.get(t)}
    changed = samples.filter_labels(field, person_made(samples, field)).count(path)
    if changed:
        counts["edited or added by a person"] = changed
    if counts:
        what = ", ".join(f"{n} {t}" for t, n in counts.items())
        raise ValueError(
            f"Field '{field}' holds reviewed labels ({what} of "
            f"{samples.count(path)}); re-thresholding would overwrite them: write into a "
            "new field, which starts with no verdicts"
        )
