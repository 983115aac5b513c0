"""The layer rules of ARCHITECTURE.md: the engine never imports FiftyOne or
the layers above it, the FiftyOne layer never imports the operators, and the
tests never import the benchmarks."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

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


ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    # layer: (its files, the top-level names it may not import)
    "engine": (
        ROOT / "diffuprompter_plugin" / "engine",
        {"fiftyone", "operators"},
    ),
    "fiftyone layer": (ROOT / "diffuprompter_plugin", {"operators"}),
    "tests": (ROOT / "tests", {"benchmarks", "bench_engine", "throwaway", "memory"}),
}


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (relative ones resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_each_layer_imports_only_what_lies_below_it():
    engine_dir = LAYERS["engine"][0]
    for layer, (folder, forbidden) in LAYERS.items():
        files = [
            p for p in folder.rglob("*.py") if layer == "engine" or engine_dir not in p.parents
        ]
        assert files, layer
        for path in files:
            bad = {
                name
                for name in _imports(path)
                for root in forbidden
                if name == root or name.startswith(f"{root}.")
            }
            if layer == "engine":  # the engine may not reach up into the FiftyOne layer
                bad |= {
                    n
                    for n in _imports(path)
                    if n.startswith("diffuprompter_plugin.")
                    and not n.startswith("diffuprompter_plugin.engine")
                }
            assert not bad, f"{path.relative_to(ROOT)} ({layer}) imports {sorted(bad)}"
