"""Importers of the paper's data (classification collections, iSAID, NWPU VHR-10)
and of GeoTIFF scenes (local or remote, and from STAC catalogues)."""

from .categories import CATEGORIES, COLLECTIONS
from .classification import import_classification_collection
from .common import AnnotationError, ImportReport
from .dlr import import_dlr_munich
from .geotiff import import_geotiffs
from .isaid import import_isaid
from .nwpu import import_nwpu_vhr10
from .stac import import_stac

__all__ = [
    "CATEGORIES",
    "COLLECTIONS",
    "AnnotationError",
    "ImportReport",
    "import_classification_collection",
    "import_dlr_munich",
    "import_geotiffs",
    "import_isaid",
    "import_nwpu_vhr10",
    "import_stac",
]
