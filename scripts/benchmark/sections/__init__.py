"""The benchmark's sections, one per module: each module here defines ``SECTION``
(:class:`scripts.benchmark.section.Section`), so a section is added by adding its module."""

from __future__ import annotations

import importlib
import pkgutil

from scripts.benchmark.section import Section


def _sections() -> dict[str, Section]:
    """Every module's ``SECTION`` by name, in the order they run."""
    found = [
        importlib.import_module(f"{__name__}.{module.name}").SECTION
        for module in pkgutil.iter_modules(__path__)
    ]
    names = [section.name for section in found]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"two sections are named {duplicates[0]!r}")
    return {section.name: section for section in sorted(found, key=lambda section: section.order)}


SECTIONS: dict[str, Section] = _sections()
