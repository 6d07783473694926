"""What a study is: a matrix of backbones x strategies x seeds, or a sweep of models, as cells.

Each cell is one ``symtrain fit`` (or ``symtrain measure``) run with a fixed name under
``<root>/<study>/``; this module says which cells a study has, what they are called and which
command runs each, the same locally and on a cluster. Running them, the report and the
``compare`` command are :mod:`symtrain.compare`'s. Free of torch, like the ``compare`` and
``report`` commands' start-up.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from symtrain.errors import SymtrainError


@dataclass
class Study:
    """A backbone x strategy x seed matrix over one data config.

    Args:
        name: the study: its runs go to ``<root>/<name>/``, its wandb group is ``name``.
        base: config files every cell starts from (e.g. the quickstart and a data config; for a
            sweep, a measure config and a data config).
        backbones: label -> backbone config file (``configs/backbone/*.yaml``).
        strategies: label -> strategy config file (``configs/symmetry/*.yaml``).
        models: a sweep instead of a training matrix: each model is measured with ``python -m
            symtrain measure`` on the base configs' data, one cell per model. A model is a timm
            name (pretrained tags included: ``resnet50.a1_in1k``), a symtrain run directory or
            checkpoint, or a measure config file (``.yaml``) with a ``model`` section (torchvision
            models, your own module).
        seeds: one run per seed in every cell.
        args: extra ``fit`` flags for every cell (e.g. ``--trainer.max_epochs=3``).
        exclude: cells to leave out, as ``backbone+strategy`` labels (e.g. ``cnn+architectural``:
            a plain CNN declares no exact invariance).
        root: directory holding the studies.
        fork: start each cell by forking a server process that imported torch and Lightning
            once (on Linux); false starts a new interpreter per cell, paying those imports
            every time. Either way each cell is a fresh process.
    """

    name: str
    base: list[str]
    backbones: dict[str, str] = field(default_factory=dict)
    strategies: dict[str, str] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    args: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    root: str = "runs/compare"
    fork: bool = True


@dataclass(frozen=True)
class Cell:
    """One run of a study: a backbone x strategy x seed fit, or one model of a sweep."""

    backbone: str
    strategy: str
    seed: int
    model: str | None = None  # the model a sweep measures (then backbone is its label)

    @property
    def run_name(self) -> str:
        return self.backbone if self.model is not None else f"{self.backbone}-{self.strategy}-s{self.seed}"

    @property
    def approach(self) -> str:
        return self.backbone if self.model is not None else f"{self.backbone} + {self.strategy}"


def model_label(model: str) -> str:
    """A sweep model's label (its run name and row): the timm name, or the run directory's,
    checkpoint's or config file's name.

    Examples:
        >>> model_label("resnet50.a1_in1k"), model_label("runs/digits/cnn-none-s0/"), model_label("m/tv.yaml")
        ('resnet50.a1_in1k', 'cnn-none-s0', 'tv')
        >>> model_label("hf-hub:timm/vit_tiny")
        'hf-hub-timm-vit_tiny'
    """
    path = Path(model)
    if path.suffix in (".yaml", ".yml", ".ckpt"):
        name = path.stem if path.suffix != ".ckpt" else f"{path.parent.parent.name}-{path.stem}"
    elif path.is_dir() or "/" in model.rstrip("/") and not model.startswith("hf-hub:"):
        name = path.name
    else:
        name = model
    return re.sub(r"[^\w.\-]+", "-", name).strip("-") or "model"


def model_flags(model: str) -> list[str]:
    """The ``measure`` flags that choose a sweep's model.

    Examples:
        >>> model_flags("resnet18.a1_in1k")
        ['--model=TimmModel', '--model.name=resnet18.a1_in1k']
        >>> model_flags("configs/measure/torchvision.yaml")
        ['--config', 'configs/measure/torchvision.yaml']
    """
    path = Path(model)
    if path.suffix in (".yaml", ".yml"):
        return ["--config", model]
    if path.suffix == ".ckpt" or path.is_dir():
        return ["--model=SymtrainRun", f"--model.path={model}"]
    return ["--model=TimmModel", f"--model.name={model}"]


def cells(study: Study) -> list[Cell]:
    """The study's cells in run order: seed-major, so a first pass over all approaches comes first.

    Examples:
        >>> study = Study("s", [], {"cnn": "a.yaml", "c4": "b.yaml"}, {"none": "n.yaml", "arch": "r.yaml"},
        ...               seeds=[0, 1], exclude=["cnn+arch"])
        >>> [cell.run_name for cell in cells(study)]
        ['cnn-none-s0', 'c4-none-s0', 'c4-arch-s0', 'cnn-none-s1', 'c4-none-s1', 'c4-arch-s1']
        >>> [cell.run_name for cell in cells(Study("zoo", [], models=["resnet18", "runs/x/cnn-s0"]))]
        ['resnet18', 'cnn-s0']
    """
    if study.models:
        return [Cell(model_label(model), "measure", 0, model) for model in study.models]
    return [
        Cell(backbone, strategy, seed)
        for seed in study.seeds
        for backbone in study.backbones
        for strategy in study.strategies
        if f"{backbone}+{strategy}" not in study.exclude
    ]


def study_dir(study: Study) -> Path:
    return Path(study.root) / study.name


def fit_command(study: Study, cell: Cell, python: str = sys.executable) -> list[str]:
    """The ``symtrain fit`` command of one cell: the same locally and on a cluster. It resumes the
    cell's run when one exists (``--ckpt_path last`` with the cell's run name). A sweep's cell
    is its ``symtrain measure`` command."""
    if cell.model is not None:
        return [
            python,
            "-m",
            "symtrain",
            "measure",
            *(arg for config in study.base for arg in ("--config", config)),
            *model_flags(cell.model),
            *study.args,
            f"--root={study_dir(study)}",
            f"--run.name={cell.run_name}",
            f"--run.group={study.name}",
            f"--run.approach={cell.approach}",
        ]
    configs = [*study.base, study.backbones[cell.backbone], study.strategies[cell.strategy]]
    return [
        python,
        "-m",
        "symtrain",
        "fit",
        *(arg for config in configs for arg in ("--config", config)),
        *study.args,
        f"--seed_everything={cell.seed}",
        f"--trainer.default_root_dir={study_dir(study)}",
        f"--run.name={cell.run_name}",
        f"--run.group={study.name}",
        f"--run.approach={cell.approach}",
        "--ckpt_path=last",
    ]


def check_study(study: Study) -> None:
    """Refuse a study that cannot run as written (a one-line :class:`SymtrainError` naming the fix):
    both a matrix and a sweep, a model listed twice, a label that cannot name a run, a config
    file that is not there, an unknown excluded cell, no cells."""
    if study.models and (study.backbones or study.strategies):
        raise SymtrainError(
            "a study either trains (backbones x strategies) or measures (models), not both: split it in two"
        )
    labels = [model_label(model) for model in study.models]
    if repeated := sorted({label for label in labels if labels.count(label) > 1}):
        raise SymtrainError(f"models named twice in the sweep: {', '.join(repeated)}: list each model once")
    labels = [*study.backbones, *study.strategies, study.name]
    for label in labels:
        if not label.replace("_", "").replace(".", "").isalnum():
            raise SymtrainError(f"study label {label!r} may only use letters, digits, '_' and '.': rename it")
    for config in [*study.base, *study.backbones.values(), *study.strategies.values()]:
        if not Path(config).is_file():
            raise SymtrainError(
                f"config '{config}' does not exist: paths in a study are relative to where you run"
            )
    known = {f"{b}+{s}" for b in study.backbones for s in study.strategies}
    if study.models and study.exclude:
        raise SymtrainError(
            "exclude names cells of a training matrix: a sweep lists only the models to measure"
        )
    if unknown := sorted(set(study.exclude) - known):
        raise SymtrainError(
            f"exclude names unknown cells {unknown}: use backbone+strategy labels, e.g. {min(known)}"
        )
    if not cells(study):
        raise SymtrainError("the study has no cells: add backbones, strategies and seeds, or exclude fewer")
