"""The benchmark's output: the printed report (a table of measures against their targets, then
each section's notes) and the JSON file of the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scripts.benchmark.sections import SECTIONS
from scripts.benchmark.table import Table


def report(results: dict[str, Any]) -> str:
    """The report of ``results``: every section's rows and notes for the figures present."""
    extra = f"; fit args: {results['fit_args']}" if results.get("fit_args") else ""
    setting = f"{results['mode']}; torch {results['torch']}{extra}"
    lines = [
        f"symtrain benchmark on {results['device_name']} ({setting})",
        "",
        "| measure | value | target | |",
        "|---|---:|---:|---|",
    ]
    table = Table(lines)
    for section in sorted(SECTIONS.values(), key=lambda section: section.rows_position):
        if section.rows is not None:
            section.rows(table, results)
    lines.append("")
    for section in sorted(SECTIONS.values(), key=lambda section: section.notes_position):
        if section.notes is not None:
            lines += section.notes(results)
    return "\n".join(lines)


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")
