"""The plugin's operators: forms, validation, delegation and progress only."""

from .evaluation import EvaluatePseudoLabels
from .export_geo import ExportGeo
from .export_training_set import ExportTrainingSet
from .importers import (
    ImportClassificationCollection,
    ImportGeotiffs,
    ImportIsaid,
    ImportNwpuVhr10,
)
from .label_queued import LabelQueuedSamples
from .resume import ResumePseudoLabels
from .rethreshold import RethresholdPseudoLabels
from .review import AcceptPseudoLabels, ReviewPseudoLabels, ReviewStatus
from .run_diffuprompter import RunDiffuPrompter
from .stac import ImportStac

OPERATORS = (
    RunDiffuPrompter,
    ResumePseudoLabels,
    LabelQueuedSamples,
    RethresholdPseudoLabels,
    ImportClassificationCollection,
    ImportIsaid,
    ImportNwpuVhr10,
    ImportGeotiffs,
    ImportStac,
    EvaluatePseudoLabels,
    ExportGeo,
    ReviewPseudoLabels,
    AcceptPseudoLabels,
    ReviewStatus,
    ExportTrainingSet,
)


def register(plugin) -> None:
    """Registers every operator with FiftyOne."""
    for operator in OPERATORS:
        plugin.register(operator)
