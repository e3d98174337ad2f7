"""Find a class by name in ``<package>/<name>_<kind>.py`` (models and datasets)."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def available(package: ModuleType, kind: str) -> list[str]:
    """Names ``<name>`` for which ``<package>/<name>_<kind>.py`` exists."""
    suffix = f"_{kind}"
    return sorted(
        m.name[: -len(suffix)]
        for m in pkgutil.iter_modules(package.__path__)
        if m.name.endswith(suffix) and m.name != f"base{suffix}"
    )


def find_class(package: ModuleType, kind: str, name: str, base: type, flag: str) -> type:
    """Import ``<package>.<name>_<kind>`` and return its subclass of ``base`` whose name is
    ``<name><Kind>`` ignoring case and underscores. ``ValueError`` lists the choices."""
    choices = available(package, kind)
    if name not in choices:
        raise ValueError(f"unknown {flag} {name!r}; choose one of: {', '.join(choices)}")
    module = importlib.import_module(f"{package.__name__}.{name}_{kind}")
    wanted = (name + kind).replace("_", "").lower()
    for obj_name, obj in vars(module).items():
        if obj_name.lower() == wanted and isinstance(obj, type) and issubclass(obj, base):
            return obj
    raise ValueError(
        f"{module.__file__} must define a subclass of {base.__name__} named like "
        f"{name.title().replace('_', '')}{kind.title()}"
    )
