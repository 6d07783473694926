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

    @property
    def has_checkpoint(self) -> bool:
        """Whether the run left a checkpoint to load: ``summary.json`` names one, or one is in its
        ``checkpoints/`` (runs from before the summary named them). A run that ``measure`` wrote
        (a timm, torchvision or user's model, measured, not trained here) has none.

        Examples:
            >>> Run(Path("nowhere"), {"checkpoints": {"best": None, "last": None}}).has_checkpoint
            False
            >>> Run(Path("nowhere"), {"checkpoints": {"best": "checkpoints/best.ckpt"}}).has_checkpoint
            True
        """
        if any(self.summary.get("checkpoints", {}).values()):
            return True
        return any((self.path / "checkpoints").glob("*.ckpt"))


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

    @property
    def recipe(self) -> str:
        """The runs' optimizer, schedule and weight averaging in short (``AdamW 3e-3, onecycle``,
        ``SGD 0.1 m0.9, MultiStepLR@epoch +EMA 0.9998``); runs from before it was recorded
        trained with AdamW and one-cycle, and a model measured, not trained here, has none."""
        texts = [
            recipe_text(run.summary.get("recipe"))
            if "recipe" in run.summary or "measured" not in run.summary
            else "not recorded"
            for run in self.runs
        ]
        return " / ".join(dict.fromkeys(texts))

    def values(self, key: str) -> list[float]:
        """The finite values of a metric (or a top-level summary number such as ``params``), one
        per run that has it."""
        found = [run.metrics.get(key, run.summary.get(key)) for run in self.runs]
        return [float(v) for v in found if isinstance(v, (int, float)) and math.isfinite(v)]

    def mean(self, key: str) -> float | None:
        """The mean over the runs that have the metric, or None where none has it."""
        values = self.values(key)
        return statistics.fmean(values) if values else None

    @property
    def accuracy_absent(self) -> str | None:
        """Why the runs have no accuracy, as ``measure`` recorded it (``measured.accuracy_absent``:
        e.g. the data's classes do not map onto the model's outputs), or None where none said."""
        reasons = [(run.summary.get("measured") or {}).get("accuracy_absent") for run in self.runs]
        return "; ".join(dict.fromkeys(" ".join(str(r).split()) for r in reasons if r)) or None

    @property
    def measured_from(self) -> str | None:
        """Where ``measure`` took the model from (``timm resnet50.a1_in1k``), or None for trained
        runs."""
        found = [run.summary.get("measured") for run in self.runs]
        named = [" ".join(str(m[k]) for k in ("source", "model") if m.get(k)) for m in found if m]
        return ", ".join(dict.fromkeys(n for n in named if n)) or None


def _number(value: Any) -> str:
    """A learning rate or decay, short: ``0.1``, ``3e-3``, ``2.5e-4``, ``0.9998``."""
    if not isinstance(value, (int, float)):
        return str(value)
    if value == 0 or abs(value) >= 0.01:
        return f"{value:g}"
    mantissa, exponent = f"{value:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def recipe_text(recipe: dict[str, Any] | None) -> str:
    """A run's ``recipe`` (``summary.json``) in a few words: optimizer, its learning rate and
    momentum, schedule and when it steps, and EMA.

    Examples:
        >>> recipe_text(None)  # a run from before recipes were recorded: the only one then
        'AdamW, onecycle'
        >>> adamw = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003, "weight_decay": 1e-4}}
        >>> recipe_text({"optimizer": adamw, "lr_scheduler": "onecycle", "lr_interval": "step"})
        'AdamW 3e-3, onecycle'
        >>> sgd = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}}
        >>> steps = {"class_path": "torch.optim.lr_scheduler.MultiStepLR", "init_args": {"milestones": [30]}}
        >>> ema = {"decay": 0.9998}
        >>> recipe_text({"optimizer": sgd, "lr_scheduler": steps, "lr_interval": "epoch", "ema": ema})
        'SGD 0.1 m0.9, MultiStepLR@epoch +EMA 0.9998'
    """
    if not recipe:
        return "AdamW, onecycle"
    optimizer = recipe.get("optimizer") or {}
    settings = optimizer.get("init_args") or {}
    words = [str(optimizer.get("class_path", "?")).rpartition(".")[2]]
    if "lr" in settings:
        words.append(_number(settings["lr"]))
    if settings.get("momentum"):
        words.append(f"m{_number(settings['momentum'])}")
    scheduler = recipe.get("lr_scheduler")
    if isinstance(scheduler, dict):
        scheduler = str(scheduler.get("class_path", "?")).rpartition(".")[2] + f"@{recipe.get('lr_interval')}"
    text = f"{' '.join(words)}, {scheduler}"
    ema = recipe.get("ema")
    return f"{text} +EMA {_number(ema.get('decay'))}" if ema else text


@dataclass
class Failure:
    """A run that failed before it measured anything (``failure.json``: an unknown model name, no
    weights, an input too small)."""

    path: Path
    model: str
    reason: str
    command: str | None = None

    @classmethod
    def read(cls, path: Path) -> Failure:
        """The failure recorded in ``path/failure.json``: ``{"model", "reason", "command"}``; a
        file that cannot be read is a failure too, named by its directory."""
        try:
            record = json.loads((path / "failure.json").read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as error:
            record = {"reason": f"failure.json could not be read ({type(error).__name__}: {error})"}
        return cls(
            path,
            " ".join(str(record.get("model") or path.name).split()),
            " ".join(str(record.get("reason") or "no reason recorded").split()),  # one line
            record.get("command"),
        )


@dataclass
class Runs:
    """What the run directories hold: finished runs grouped by approach (in order of first
    appearance), the unfinished directories (a config but no summary yet), and the failed runs
    (a ``failure.json``)."""

    approaches: list[Approach]
    unfinished: list[Path] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a run directory: finished (``summary.json``), started (``config.yaml``)
    or failed (``failure.json``).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     before = is_run_dir(tmp)
        ...     _ = (Path(tmp) / "failure.json").write_text("{}")
        ...     before, is_run_dir(tmp)
        (False, True)
    """
    return any((Path(path) / name).is_file() for name in ("summary.json", "config.yaml", "failure.json"))


def read_runs(run_dirs: Sequence[str | os.PathLike]) -> Runs:
    """The runs in ``run_dirs``: finished, unfinished and failed (see :class:`Runs`). A directory
    with a ``summary.json`` is finished, else one with a ``failure.json`` failed, else one with
    a ``config.yaml`` has not finished.

    Raises:
        SymtrainError: if a path is not a run directory, or no run has finished (naming the first
            failure's reason where every run failed).
    """
    if not run_dirs:
        raise SymtrainError("no run directories given: pass one or more, e.g. runs/compare/shapes")
    approaches: dict[str, Approach] = {}
    unfinished: list[Path] = []
    failed: list[Failure] = []
    for path in map(Path, run_dirs):
        summary = path / "summary.json"
        if summary.is_file():
            run = Run(path, json.loads(summary.read_text()))
            approaches.setdefault(run.approach, Approach(run.approach)).runs.append(run)
        elif (path / "failure.json").is_file():
            failed.append(Failure.read(path))
        elif (path / "config.yaml").is_file():
            unfinished.append(path)
        else:
            raise SymtrainError(
                f"'{path}' is not a run directory (no summary.json, config.yaml or failure.json): "
                "pass run directories"
            )
    if not approaches:
        first = f"the first, {failed[0].model}: {failed[0].reason}" if failed else ""
        if not unfinished:
            raise SymtrainError(f"every run failed ({len(failed)}); {first}")
        raise SymtrainError(
            f"none of the {len(unfinished) + len(failed)} runs has finished (no summary.json): "
            + (f"{len(failed)} failed, {first}; " if failed else "")
            + "train them first"
        )
    return Runs(split_by_recipe(list(approaches.values())), unfinished, failed)


def split_by_recipe(approaches: list[Approach]) -> list[Approach]:
    """Approaches whose runs trained with different recipes (runs of one backbone and strategy
    trained alone, with SGD and with AdamW) are not one approach with several seeds: each
    recipe becomes an approach of its own, named ``approach (recipe)``.

    Examples:
        >>> sgd = {"optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}},
        ...        "lr_scheduler": "constant"}
        >>> runs = [Run(Path("a"), {"approach": "cnn", "recipe": sgd}), Run(Path("b"), {"approach": "cnn"})]
        >>> [a.name for a in split_by_recipe([Approach("cnn", runs)])]
        ['cnn (SGD 0.1, constant)', 'cnn (AdamW, onecycle)']
    """
    split = []
    for approach in approaches:
        by_recipe: dict[str, list[Run]] = {}
        for run in approach.runs:
            by_recipe.setdefault(Approach(approach.name, [run]).recipe, []).append(run)
        if len(by_recipe) == 1:
            split.append(approach)
            continue
        split += [Approach(f"{approach.name} ({recipe})", runs) for recipe, runs in by_recipe.items()]
    return split


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
                axis = next((k for k in curve if k not in ("acc", "miou")), None)
                if axis is None:  # nothing to draw it against
                    continue
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
