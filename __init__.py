"""FiftyOne plugin entry: registers the DiffuPrompter operators.

FiftyOne re-imports this file on every operator lookup, so it imports only
the light operator modules; torch and the models load inside ``execute``.
"""

from .operators import register

__all__ = ["register"]
