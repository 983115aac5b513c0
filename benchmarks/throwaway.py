"""The tests' throw-away FiftyOne home (``tests/fiftyone_home.py``) for the
benchmarks: each calls :func:`use_throwaway_home` first in ``main()``, so
that importing a benchmark module does nothing."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
"""The tests' folder: the throw-away home and the helpers some benchmarks use."""


def use_throwaway_home(**settings: str) -> str:
    """Points FiftyOne at a throw-away home and a MongoDB of its own, both
    removed at exit, makes the tests' helpers importable, and returns the
    home's folder.

    Args:
        settings: extra environment variables (``FIFTYONE_*``) to set.

    Raises:
        RuntimeError: fiftyone was imported already, so it would keep the
            user's own database and folders.
    """
    if "fiftyone" in sys.modules:
        raise RuntimeError("use_throwaway_home() must run before anything imports fiftyone")
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from fiftyone_home import use_throwaway_home as use_home

    return use_home("diffuprompter-bench-", **settings)
