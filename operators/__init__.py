"""The plugin's operators: forms, validation, delegation and progress only."""

from .rethreshold import RethresholdPseudoLabels
from .run_diffuprompter import RunDiffuPrompter

OPERATORS = (RunDiffuPrompter, RethresholdPseudoLabels)


def register(plugin) -> None:
    """Registers every operator with FiftyOne."""
    for operator in OPERATORS:
        plugin.register(operator)
