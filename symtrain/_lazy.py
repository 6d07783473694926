"""Deferred imports of heavy optional dependencies."""

from __future__ import annotations

import importlib
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
