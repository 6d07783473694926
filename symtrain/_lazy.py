"""Deferred imports of heavy optional dependencies, and the plugin packages' own imports."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any


class _LazyModule(ModuleType):
    # importlib.util.LazyLoader cannot defer a submodule such as escnn.nn: finding its spec
    # already imports the parent package, which is most of the cost. This proxy imports the
    # module on the first attribute access and caches each attribute it hands out.
    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self.__name__), attr)
        setattr(self, attr, value)
        return value


def lazy_module(name: str) -> ModuleType:
    """A stand-in for module ``name`` that imports it when an attribute is first read.

    Examples:
        >>> json = lazy_module("json")
        >>> json.dumps([1])
        '[1]'
    """
    return _LazyModule(name)


def import_submodules(package: str) -> None:
    """Import every module of ``package`` (a plugin package: backbones, strategies, data), so a
    plugin written in a new file there is usable by its short class name in configs without
    an import line of its own."""
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")
