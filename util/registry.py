"""Classes found by name for one command-line flag (``--model``, ``--dataset_mode``,
``--netG_type``): the one registry mechanism of the project.

A class joins a registry with the :meth:`Registry.register` decorator, in any module. The
built-in ones live in ``<package>/*_<suffix>.py`` (e.g. ``models/gan_generator.py``); those
modules are imported with :mod:`importlib` the first time a name is looked up or the choices
are listed, so a registry never imports its members statically (no import cycle between a
base class and its subclasses) and a new member is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Subclasses of ``base`` by name, for the command-line flag ``flag``.

    Args:
        flag: the flag that selects a member (named in errors), e.g. ``"--netG_type"``.
        base: every member must subclass it.
        package: dotted name of the package whose ``*_<suffix>.py`` modules hold the built-in
            members, e.g. ``"models"``.
        suffix: module-name suffix of the built-in members, e.g. ``"generator"``.
    """

    def __init__(self, flag: str, base: type[T], *, package: str, suffix: str) -> None:
        self.flag = flag
        self.base = base
        self.package = package
        self.suffix = suffix
        self._classes: dict[str, type[T]] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: make the class available as ``<flag> name``. ``ValueError`` when
        another class holds the name; ``TypeError`` when the class is not a ``base``."""

        def wrap(cls: type[T]) -> type[T]:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(
                    f"{self.flag} {name!r}: {cls!r} is not a subclass of {self.base.__name__}"
                )
            held = self._classes.get(name)
            if held is not None and held is not cls:
                raise ValueError(
                    f"{self.flag} {name!r} is registered twice: {_qualname(held)} and "
                    f"{_qualname(cls)}"
                )
            self._classes[name] = cls
            return cls

        return wrap

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; ``ValueError`` names the flag and the choices."""
        if name not in self._classes:
            self.discover()
        try:
            return self._classes[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.flag} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Every registered name, the built-in ones included, sorted."""
        self.discover()
        return sorted(self._classes)

    def discover(self) -> None:
        """Import every ``<package>/*_<suffix>.py`` once (their decorators register them)."""
        if self._discovered:
            return
        self._discovered = True  # set first: a member module may look a name up at import
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if module.name.endswith(f"_{self.suffix}"):
                importlib.import_module(f"{self.package}.{module.name}")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
