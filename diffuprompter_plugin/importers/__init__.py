"""Importers of the paper's data: classification collections, iSAID, NWPU VHR-10."""

from .categories import CATEGORIES, COLLECTIONS
from .classification import import_classification_collection
from .common import AnnotationError, ImportReport
from .dlr import import_dlr_munich
from .isaid import import_isaid
from .nwpu import import_nwpu_vhr10

__all__ = [
    "CATEGORIES",
    "COLLECTIONS",
    "AnnotationError",
    "ImportReport",
    "import_classification_collection",
    "import_dlr_munich",
    "import_isaid",
    "import_nwpu_vhr10",
]
