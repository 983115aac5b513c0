"""The paper's 12 categories and the one table mapping collection folders onto them.

Folder names are matched on their matching key (lowercase, letters and
digits only: :func:`~diffuprompter_plugin.engine.class_names.match_key`), so
``storage-tank``, ``StorageTanks`` and ``storage_tanks`` differ only where the
collections really differ. "direct" folders are the category; "candidate"
folders are scene-level guesses (a parking lot shows vehicles) that are
imported only on request.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.class_names import match_key

CATEGORIES = (
    "airplane",
    "ship",
    "storage tank",
    "baseball diamond",
    "swimming pool",
    "tennis court",
    "basketball court",
    "roundabout",
    "ground track field",
    "harbor",
    "bridge",
    "vehicle",
)


@dataclass(frozen=True)
class Collection:
    """A scene-classification collection's on-disk layout and mapping.

    Attributes:
        name: display name.
        roots: folder names the collection is recognised by.
        image_dir: path from the root to the class folders ("" for the root).
        direct: ``{folder: category}`` folders that are the category.
        candidate: ``{folder: category}`` scene-level candidates.
    """

    name: str
    roots: tuple[str, ...]
    image_dir: str
    direct: dict[str, str]
    candidate: dict[str, str]

    def category(self, folder: str, include_candidates: bool) -> tuple[str | None, bool]:
        """(category or None, whether it is a candidate mapping) of a folder."""
        key = match_key(folder)
        direct = {match_key(k): v for k, v in self.direct.items()}
        if key in direct:
            return direct[key], False
        candidate = {match_key(k): v for k, v in self.candidate.items()}
        if include_candidates and key in candidate:
            return candidate[key], True
        return None, False


RESISC45_FOLDERS = (
    {
        "airplane": "airplane",
        "baseball_diamond": "baseball diamond",
        "basketball_court": "basketball court",
        "bridge": "bridge",
        "ground_track_field": "ground track field",
        "harbor": "harbor",
        "roundabout": "roundabout",
        "ship": "ship",
        "storage_tank": "storage tank",
        "tennis_court": "tennis court",
    },
    {"parking_lot": "vehicle", "overpass": "bridge"},
)
"""(direct, candidate) folders of NWPU-RESISC45, and of OPTIMAL-31, whose 31
folders are named as RESISC45's and lack only its ship, storage tank and
tennis court."""

COLLECTIONS = {
    c.name: c
    for c in (
        Collection(
            "UC Merced",
            ("UCMerced_LandUse",),
            "Images",
            {
                "airplane": "airplane",
                "baseballdiamond": "baseball diamond",
                "harbor": "harbor",
                "storagetanks": "storage tank",
                "tenniscourt": "tennis court",
            },
            {"parkinglot": "vehicle", "overpass": "bridge"},
        ),
        Collection(
            "WHU-RS19",
            ("WHU-RS19", "RSDataset"),
            "",
            {"Bridge": "bridge", "Port": "harbor"},
            {
                "Airport": "airplane",
                "Parking": "vehicle",
                "Viaduct": "bridge",
                "footballField": "ground track field",
            },
        ),
        Collection("RSSCN7", ("RSSCN7",), "", {}, {"gParking": "vehicle"}),
        Collection(
            "RS_C11",
            ("RS_C11", "RS_C11_Database"),
            "",
            {"harbor": "harbor", "storage tanks": "storage tank"},
            {"overpass": "bridge"},
        ),
        Collection("NWPU-RESISC45", ("NWPU-RESISC45",), "", *RESISC45_FOLDERS),
        Collection(
            "AID",
            ("AID",),
            "",
            {
                "BaseballField": "baseball diamond",
                "Bridge": "bridge",
                "Playground": "ground track field",
                "Port": "harbor",
                "StorageTanks": "storage tank",
            },
            {
                "Airport": "airplane",
                "Parking": "vehicle",
                "Viaduct": "bridge",
                "Stadium": "ground track field",
            },
        ),
        Collection(
            "RSD46-WHU",
            ("RSD46-WHU",),
            "",
            {
                "Airplane": "airplane",
                "Basketball court": "basketball court",
                "Cross river bridge": "bridge",
                "Dock": "harbor",
                "Oil tank": "storage tank",
                "Playground": "ground track field",
                "Ship": "ship",
                "Tennis court": "tennis court",
            },
            {
                "Footbridge": "bridge",
                "Overpass": "bridge",
                "Parting lot": "vehicle",
                "Parking lot": "vehicle",
                "Airport": "airplane",
            },
        ),
        Collection(
            "PatternNet",
            ("PatternNet",),
            "images",
            {
                "airplane": "airplane",
                "baseball_field": "baseball diamond",
                "basketball_court": "basketball court",
                "bridge": "bridge",
                "harbor": "harbor",
                "storage_tank": "storage tank",
                "swimming_pool": "swimming pool",
                "tennis_court": "tennis court",
            },
            {
                "parking_lot": "vehicle",
                "parking_space": "vehicle",
                "ferry_terminal": "harbor",
                "overpass": "bridge",
            },
        ),
        Collection("OPTIMAL-31", ("OPTIMAL-31",), "Images", *RESISC45_FOLDERS),
        Collection(
            "CLRS",
            ("CLRS",),
            "",
            {
                "bridge": "bridge",
                "playground": "ground track field",
                "port": "harbor",
                "storage-tank": "storage tank",
            },
            {
                "airport": "airplane",
                "parking": "vehicle",
                "overpass": "bridge",
                "stadium": "ground track field",
            },
        ),
    )
}


def find_collection(name: str) -> Collection | None:
    """The collection a folder or user-given name refers to, or None."""
    key = match_key(name)
    for collection in COLLECTIONS.values():
        if key in {match_key(collection.name), *map(match_key, collection.roots)}:
            return collection
    return None
