"""Import the original HealthiVert-GAN code (../shared/reference/healthivert_original) as a
test oracle, under package names that cannot clash with ours (``hv_original_models``, ...).

Only tests use this; the project never imports or copies the original. The original's
``models/__init__.py`` and ``data/__init__.py`` import ``models`` and ``data`` by absolute name,
so the packages are created empty and their submodules imported one by one; the few
absolute imports inside submodules (``from data.base_dataset import ...``) are pointed at the
original's modules for the duration of the import only.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]
_CANDIDATES = (
    _REPO.parent / "shared" / "reference" / "healthivert_original",
    Path("/work/shared/reference/healthivert_original"),
)
ORIGINAL: Path | None = next((p for p in _CANDIDATES if (p / "models").is_dir()), None)
_DATA_CANDIDATES = (_REPO.parent / "shared" / "data", Path("/work/shared/data"))
SHARED_DATA: Path | None = next((p for p in _DATA_CANDIDATES if p.is_dir()), None)

requires_original = pytest.mark.skipif(
    ORIGINAL is None, reason="the original's code (shared/reference/healthivert_original) is absent"
)


def _package(name: str) -> types.ModuleType:
    """An empty package ``hv_original_<name>`` whose submodules are the original's files."""
    if ORIGINAL is None:
        pytest.skip("the original's code is not available")
    pkg_name = f"hv_original_{name}"
    if pkg_name not in sys.modules:
        pkg = types.ModuleType(pkg_name)
        pkg.__path__ = [str(ORIGINAL / name)]
        sys.modules[pkg_name] = pkg
    return sys.modules[pkg_name]


@contextlib.contextmanager
def _aliases(names: dict[str, types.ModuleType]) -> Iterator[None]:
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(names)
    try:
        yield
    finally:
        for n, mod in saved.items():
            if mod is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = mod


def original_module(name: str) -> types.ModuleType:
    """The original's module ``<package>.<module>``, e.g. ``"models.inpaint_networks"``,
    ``"data.aligned_dataset"``, ``"evaluation.RHLV_quantification"``."""
    package, _, module = name.partition(".")
    pkg = _package(package)
    full = f"{pkg.__name__}.{module}"
    if full in sys.modules:
        return sys.modules[full]
    if package == "data":
        # aligned_dataset.py imports `data.base_dataset` and `data.image_folder` by absolute name.
        base = importlib.import_module(f"{pkg.__name__}.base_dataset")
        folder = importlib.import_module(f"{pkg.__name__}.image_folder")
        with _aliases({"data": pkg, "data.base_dataset": base, "data.image_folder": folder}):
            return importlib.import_module(full)
    return importlib.import_module(full)
