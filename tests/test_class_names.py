"""One class-name type: its prompt form, slug, matching key and rules."""

from __future__ import annotations

import pytest

from diffuprompter_plugin.engine.class_names import (
    MAX_SLUG_LENGTH,
    ClassName,
    match_key,
    validate_class_names,
)
from diffuprompter_plugin.labels import heatmap_fields


@pytest.mark.parametrize(
    ("name", "prompt_name", "slug", "key"),
    [
        ("storage tank", "storage tank", "storage_tank", "storagetank"),
        ("Storage_Tank", "storage tank", "storage_tank", "storagetank"),
        ("Storage-Tanks", "storage tanks", "storage_tanks", "storagetanks"),
        (" ground-track  field ", "ground track field", "ground_track_field", "groundtrackfield"),
        ("footballField", "footballfield", "footballfield", "footballfield"),
        ("oil tank (large)", "oil tank (large)", "oil_tank_large", "oiltanklarge"),
        ("Café 2", "café 2", "café_2", "caf2"),
    ],
)
def test_forms_of_a_class_name(name, prompt_name, slug, key):
    """The forms stored runs and imported datasets already use: slugs name
    existing heatmap fields and folders, keys match existing folders."""
    class_name = ClassName(name)
    assert class_name.name == str(class_name) == name
    assert class_name.prompt_name == prompt_name
    assert class_name.slug == slug
    assert class_name.key == key == match_key(name)


def test_prompt_fills_the_template_with_the_prompt_name():
    assert ClassName("Storage_Tank").prompt("Photo of a {}") == "Photo of a storage tank"
    assert ClassName("ship").prompt("{} in an aerial image") == "ship in an aerial image"


def test_match_key_takes_any_folder_name_unchecked():
    assert match_key("RS_C11_Database") == "rsc11database"
    assert match_key("__") == ""  # a folder name, not a class name: no error


def test_slug_at_the_length_limit_is_taken_one_more_is_refused():
    assert ClassName("a" * MAX_SLUG_LENGTH).slug == "a" * MAX_SLUG_LENGTH
    with pytest.raises(
        ValueError,
        match=r"Invalid class name: 'a{60}\.\.\.' is too long: its field and folder name "
        r"would be 101 characters, at most 100 fit",
    ):
        ClassName("a" * (MAX_SLUG_LENGTH + 1))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("__", r"Invalid class name: '__' has no letter or digit"),
        (" ", r"Invalid class name: ' ' has no letter or digit"),
        ("!?", r"Invalid class name: '!\?' has no letter or digit"),
        (3, r"Invalid class name: 3 is a int, not a string"),
        (None, r"Invalid class name: None is a NoneType, not a string"),
    ],
)
def test_invalid_class_names_are_refused_naming_the_value(name, message):
    with pytest.raises(ValueError, match=message):
        ClassName(name)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("ship", r"must be a list of names, not the string 'ship'"),
        ([], "class_names is empty"),
        (["ship", " ", "__"], r"Invalid class names: ' ' has no .*; '__' has no letter or digit"),
        (["ship", "ship"], r"Duplicate class names in \['ship', 'ship'\]"),
        (
            ["storage tank", "ship", "Storage_Tank"],
            "'storage tank' and 'Storage_Tank' differ only in case, spaces or punctuation, "
            "so both would be stored in the heatmap field and folder of 'storage_tank'",
        ),
    ],
)
def test_class_name_lists_are_checked_in_one_place(names, message):
    with pytest.raises(ValueError, match=message):
        validate_class_names(names)
    with pytest.raises(ValueError, match=message):
        heatmap_fields(names, "dp_heatmap")


def test_valid_lists_keep_their_names_and_order():
    names = ("Storage Tank", "ship", "ground-track field")
    assert validate_class_names(iter(names)) == list(names)
    assert heatmap_fields(names, "dp_heatmap") == {
        "Storage Tank": "dp_heatmap_storage_tank",
        "ship": "dp_heatmap_ship",
        "ground-track field": "dp_heatmap_ground_track_field",
    }


def test_class_name_is_a_frozen_value():
    a, b = ClassName("ship"), ClassName("ship")
    assert a == b and hash(a) == hash(b) and a != ClassName("Ship")
    with pytest.raises(AttributeError):
        a.name = "harbor"
