"""The layer rule: the engine never imports FiftyOne, and the plugin entry
(operators) imports neither torch nor the engine's models at import time."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import diffuprompter_plugin.engine as engine

ENGINE_MODULES = sorted(
    f"diffuprompter_plugin.engine.{m.name}" for m in pkgutil.iter_modules(engine.__path__)
)


def _loaded_after(imports: list[str]) -> set[str]:
    """Top-level package names in ``sys.modules`` after importing ``imports``
    in a fresh interpreter."""
    code = (
        "import importlib, sys\n"
        f"for name in {imports!r}: importlib.import_module(name)\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return set(out.split())


def test_engine_never_imports_fiftyone():
    assert "diffuprompter_plugin.engine.pipeline" in ENGINE_MODULES
    assert len(ENGINE_MODULES) >= 11
    loaded = _loaded_after(ENGINE_MODULES)
    assert "torch" in loaded  # the engine really was imported
    assert "fiftyone" not in loaded
