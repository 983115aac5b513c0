"""The layer rules of ARCHITECTURE.md: the engine never imports FiftyOne or
the layers above it, the FiftyOne layer never imports the operators, the
tests never import the benchmarks, and no module of the engine imports
itself back through others (no import cycle)."""

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


def _imports(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute module names a file imports (relative ones resolved), at any
    depth: inside functions and under ``TYPE_CHECKING`` too."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
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


def import_cycles(package: Path, root: Path) -> list[list[str]]:
    """The import cycles among the modules of ``package`` (a folder under
    ``root``): each a list of modules that import one another, found from
    every import in their source (:func:`_imports`), so a cycle hidden in a
    function or under ``TYPE_CHECKING`` counts."""
    prefix = ".".join(package.relative_to(root).parts)
    modules = {
        ".".join(p.relative_to(root).with_suffix("").parts): p for p in package.glob("*.py")
    }
    graph = {
        name: {
            target
            for imported in _imports(path, root)
            for target in (imported, imported.rsplit(".", 1)[0])
            if target in modules and target != name and target != prefix
        }
        for name, path in modules.items()
    }
    # Tarjan's strongly connected components: a component of two or more is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_the_engine_has_no_import_cycle():
    engine_dir = LAYERS["engine"][0]
    assert len(list(engine_dir.glob("*.py"))) >= 11
    assert import_cycles(engine_dir, ROOT) == []


def test_a_planted_cycle_is_caught_even_when_hidden(tmp_path):
    """A cycle of three, closed by a function-level import, and a pair
    hidden under TYPE_CHECKING, as the tiling and pipeline modules once did."""
    package = tmp_path / "pkg" / "engine"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import f\n")
    (package / "b.py").write_text("from . import c\n\ndef f():\n    return c\n")
    (package / "c.py").write_text("def g():\n    from pkg.engine.a import f\n    return f\n")
    (package / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .e import E\n"
    )
    (package / "e.py").write_text("from .d import TYPE_CHECKING\n")
    (package / "f.py").write_text("from .a import f\nfrom . import e\n")  # imports, no cycle
    assert import_cycles(package, tmp_path) == [
        ["pkg.engine.a", "pkg.engine.b", "pkg.engine.c"],
        ["pkg.engine.d", "pkg.engine.e"],
    ]
