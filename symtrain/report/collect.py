"""Reading finished runs back from their directories (``summary.json``), grouped by approach."""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from symtrain.errors import SymtrainError


@dataclass
class Run:
    """One finished run: where it is and what its ``summary.json`` says."""

    path: Path
    summary: dict[str, Any]

    @property
    def approach(self) -> str:
        """The comparison cell's label, or ``backbone + strategy`` for runs trained alone."""
        return self.summary.get("approach") or f"{self.summary['backbone']} + {self.summary['strategy']}"

    @property
    def metrics(self) -> dict[str, float]:
        """The final flat metrics (``test/acc``, ``test/equiv/rot90/acc``, ...)."""
        return self.summary.get("metrics", {})


@dataclass
class Approach:
    """The runs of one approach (one per seed)."""

    name: str
    runs: list[Run] = field(default_factory=list)

    @property
    def base_pipeline(self) -> str:
        """What the runs' training images went through besides the strategy (``none``,
        ``pad_crop``, ``resized_crop``, ``+flip``); runs from before it was recorded had none."""
        return " / ".join(dict.fromkeys(run.summary.get("base_pipeline", "none") for run in self.runs))

    def values(self, key: str) -> list[float]:
        """The finite values of a metric (or a top-level summary number such as ``params``), one
        per run that has it."""
        found = [run.metrics.get(key, run.summary.get(key)) for run in self.runs]
        return [float(v) for v in found if isinstance(v, (int, float)) and math.isfinite(v)]


def read_runs(run_dirs: Sequence[str | os.PathLike]) -> tuple[list[Approach], list[Path]]:
    """Finished runs grouped by approach (in order of first appearance), and the unfinished
    run directories (a config but no summary yet).

    Raises:
        SymtrainError: if a path is not a run directory, or no run has finished.
    """
    if not run_dirs:
        raise SymtrainError("no run directories given: pass one or more, e.g. runs/compare/shapes")
    approaches: dict[str, Approach] = {}
    unfinished: list[Path] = []
    for path in map(Path, run_dirs):
        summary = path / "summary.json"
        if summary.is_file():
            run = Run(path, json.loads(summary.read_text()))
            approaches.setdefault(run.approach, Approach(run.approach)).runs.append(run)
        elif (path / "config.yaml").is_file():
            unfinished.append(path)
        else:
            raise SymtrainError(
                f"'{path}' is not a run directory (no summary.json or config.yaml): pass run directories"
            )
    if not approaches:
        raise SymtrainError(
            f"none of the {len(unfinished)} runs has finished (no summary.json): train them first"
        )
    return list(approaches.values()), unfinished


def mean_std(values: list[float]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (0 for one value), or None without values.

    Examples:
        >>> mean_std([1.0, 3.0])
        (2.0, 1.4142135623730951)
        >>> mean_std([]) is None
        True
    """
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def families(approaches: list[Approach]) -> list[str]:
    """The transformation families measured in any run: in the order the runs' configs list
    them (``summary.json``'s ``families``), then any other a run measured, by name."""
    names: dict[str, None] = {}
    for approach in approaches:
        for run in approach.runs:
            names.update(dict.fromkeys(run.summary.get("families", [])))
    measured = {
        key.split("/")[2]
        for a in approaches
        for r in a.runs
        for key in r.metrics
        if key.startswith("test/equiv/")
    }
    names.update(dict.fromkeys(sorted(measured - set(names))))
    return [name for name in names if name in measured]


@dataclass(frozen=True)
class Task:
    """How the report reads and names one task's score."""

    name: str
    score: str  # the metric of the upright and per-family score, and of the curves
    score_label: str


TASKS = {
    "classification": Task("classification", "acc", "accuracy"),
    "segmentation": Task("segmentation", "miou", "mIoU"),
}


def measures_of(approaches: list[Approach], task: Task) -> list[dict[str, Any]]:
    """What each measure of the runs is (key, title, caption, definition, scale, digits, table),
    as the runs recorded it in ``summary.json``; for runs that did not, today's measures."""
    for approach in approaches:
        for run in approach.runs:
            if run.summary.get("measures"):
                return run.summary["measures"]
    from symtrain.metrics import measures_for

    return [cls.describe() for cls in measures_for(task.name, None)]


def curves_of(approaches: list[Approach], task: Task) -> dict[str, dict[str, str]]:
    """The curves the runs recorded, by name (``rotation``, ``shift``, ...), each with the axis
    it is drawn against and that axis' label, as the curve measure described them; runs from
    before the measures described their curves get the axis' name as the label."""
    described = next((m.get("axes") for m in measures_of(approaches, task) if m["key"] == "curve"), None)
    recorded: dict[str, dict[str, str]] = {}
    for approach in approaches:
        for run in approach.runs:
            for key, curve in run.summary.get("curves", {}).items():
                name = key.partition("/")[2]
                axis = next(k for k in curve if k not in ("acc", "miou"))
                recorded.setdefault(name, (described or {}).get(name) or {"axis": axis, "label": axis})
    return recorded


def task_of(approaches: list[Approach]) -> Task:
    """The one task every run was trained for.

    Raises:
        SymtrainError: if the runs mix classification and segmentation.
    """
    tasks = {run.summary.get("task", "classification"): run.path for a in approaches for run in a.runs}
    if len(tasks) > 1:
        named = ", ".join(f"'{path}' ({task})" for task, path in sorted(tasks.items()))
        raise SymtrainError(f"the runs mix tasks, e.g. {named}: report each task's runs separately")
    return TASKS[next(iter(tasks))]
