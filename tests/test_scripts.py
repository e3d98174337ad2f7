"""scripts/: every tool is a thin command line that answers --help, edits no sys.path and
imports no other script (its logic is library code, importable from anywhere)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (REPO / "scripts").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_answers_help(name, run_script, capsys):
    assert run_script(name, ["--help"]) == 0
    assert "usage:" in capsys.readouterr().out


def _python_files() -> list[Path]:
    skip = {".venv", "datasets", "checkpoints", "results", ".git"}
    return [p for p in REPO.rglob("*.py") if not skip & set(p.relative_to(REPO).parts)]


def _offences(path: Path) -> list[str]:
    """``file:line what`` of each import from ``scripts`` and, in scripts/, each use of
    ``sys.path``."""
    rel = path.relative_to(REPO)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        else:
            modules = []
        if any(m.split(".")[0] == "scripts" for m in modules):
            found.append(f"{rel}:{node.lineno} imports from scripts")
        if rel.parts[0] == "scripts" and isinstance(node, ast.Attribute):
            if ast.unparse(node) == "sys.path":
                found.append(f"{rel}:{node.lineno} edits sys.path")
    return found


def test_no_sys_path_edits_and_no_imports_from_scripts():
    assert [o for p in _python_files() for o in _offences(p)] == []
