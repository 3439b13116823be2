"""The one registry shape kvbench uses for what it finds by name: methods (:data:`kvbench.methods.METHODS`) and
suites (:data:`kvbench.suites.SUITES`).

A :class:`Registry` is a ``{name: class}`` dict filled by its :meth:`~Registry.register` class decorator, plus
discovery: :meth:`~Registry.discover` imports every module of its package, so a new module registers itself on
import and no other file lists it (as lm-eval's model registry). The registry names its package as a string,
so this bottom-layer module imports nothing of kvbench.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", bound=type)


class Registry(dict):
    """``{name: class}`` for one kind of extension; ``name_of(cls)`` is the name a class registers under."""

    def __init__(self, kind: str, package: str, name_of: Callable[[type], str]):
        super().__init__()
        self.kind, self.package, self.name_of = kind, package, name_of
        self._discovered = False

    def register(self, cls: T) -> T:
        """Class decorator: make ``cls`` selectable by its name (a second class under the same name is a bug)."""
        name = self.name_of(cls)
        if name in self and self[name] is not cls:
            raise RuntimeError(f"{self.kind} {name!r} registered twice")
        self[name] = cls
        return cls

    def discover(self) -> "Registry":
        """Import every module of the package except ``base`` (each registers its classes); once. Returns self."""
        if not self._discovered:
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__):
                if module.name != "base":
                    importlib.import_module(f"{self.package}.{module.name}")
            self._discovered = True  # only once every import succeeded: a failed one is raised again next time
        return self
