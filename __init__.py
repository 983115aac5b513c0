"""FiftyOne plugin entry: registers the DiffuPrompter operators.

FiftyOne re-imports this file on every operator lookup, so it imports only
the light operator modules; torch and the models load inside ``execute``.
"""

if __package__:  # FiftyOne imports this file as a package; pytest's collector does not
    from .operators import register

    __all__ = ["register"]
