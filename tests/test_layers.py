"""Layers that only point down (docs/ARCHITECTURE.md, CONVENTIONS.md 15): read with ``ast``
(nothing is imported), over every product module, i.e. every ``.py`` file of the repository
outside ``tests/`` and the ``test_*.py`` files (``test.py`` is an entry point, so it counts).

* ``util/`` imports none of the upper packages;
* ``util/geometry.py``, the ground floor, imports nothing from the project;
* no import cycle between product modules (imports inside functions count too);
* no product file over 500 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {"tests", ".venv", "datasets", "checkpoints", "results", ".git"}
#: Packages ``util/`` must never import: everything above the helpers.
ABOVE_UTIL = ("models", "data", "evaluation", "cam", "benchmarks", "options")
MAX_LINES = 500

# Known breaches that parts B and C of the "One house" refactor are removing; each entry is
# removed when part B/C lands (then these sets are empty and stay empty).
#: ``(importer, imported)`` edges of util/ into upper layers.
KNOWN_UTIL_IMPORTS: set[tuple[str, str]] = set()
#: Known import cycles, each as the sorted modules of its strongly connected component.
KNOWN_CYCLES: set[tuple[str, ...]] = set()
#: Files known to be over MAX_LINES.
KNOWN_LONG_FILES: set[str] = set()


def product_files() -> dict[str, Path]:
    """Dotted module name -> file, for every product module."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if set(rel.parts[:-1]) & SKIP_DIRS or rel.name.startswith("test_"):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Product modules that ``name`` imports, at module level or inside functions: for
    ``from pkg import x`` the submodule ``pkg.x`` when it is one, else ``pkg``."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
            targets = [t if t in known else base for t in targets]
        else:
            continue
        for target in targets:
            # ``import a.b.c`` names a.b.c; keep the longest prefix that is a product module
            parts = target.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts and ".".join(parts) != name:
                found.add(".".join(parts))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = product_files()
    known = set(files)
    return {name: imported_modules(name, path, known) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[tuple[str, ...]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_scan_sees_the_project(graph, tmp_path):
    """Guards the guard: the walk finds the packages and reads every kind of import."""
    assert {"util.geometry", "data.vertebra_dataset", "models.pix2pix_model", "train"} <= set(graph)
    assert "util.geometry" in graph["data.vertebra_dataset"]  # from util.geometry import ...
    assert "data" in graph["options.base_options"]  # import data
    source = tmp_path / "mod.py"
    source.write_text(
        "import os\nfrom . import sib\nfrom .sub import x\n"
        "def f():\n    from pkg import other, name\n    import pkg.deep.leaf\n"
    )
    known = {"pkg", "pkg.mod", "pkg.sib", "pkg.sub", "pkg.other", "pkg.deep"}
    assert imported_modules("pkg.mod", source, known) == {
        "pkg",
        "pkg.sib",
        "pkg.sub",
        "pkg.other",
        "pkg.deep",
    }
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(toy) == [("a", "b", "c")] and cycles({"a": {"b"}, "b": set()}) == []


def test_util_imports_no_upper_layer(graph):
    bad = {
        (name, dep)
        for name, deps in graph.items()
        if name.split(".")[0] == "util"
        for dep in deps
        if dep.split(".")[0] in ABOVE_UTIL
    }
    assert bad - KNOWN_UTIL_IMPORTS == set(), "util/ must not import upper layers"
    assert KNOWN_UTIL_IMPORTS - bad == set(), "fixed: remove it from KNOWN_UTIL_IMPORTS"


def test_geometry_is_the_ground_floor(graph):
    assert graph["util.geometry"] == set()


def test_no_import_cycle(graph):
    found = set(cycles(graph))
    assert found - KNOWN_CYCLES == set(), "import cycle between product modules"
    assert KNOWN_CYCLES - found == set(), "fixed: remove it from KNOWN_CYCLES"


def test_no_product_file_over_500_lines():
    long = {
        str(path.relative_to(ROOT))
        for path in product_files().values()
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_LINES
    }
    assert long - KNOWN_LONG_FILES == set(), f"product files over {MAX_LINES} lines"
    assert KNOWN_LONG_FILES - long == set(), "fixed: remove it from KNOWN_LONG_FILES"
