"""The published experiments in configs/papers/, each planned without its data: its cells, the
recipe that reaches the optimizer (the learning rate of every epoch, against the paper's code's
own formula) and the data pipeline its runs record."""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from jsonargparse import ArgumentParser

from symtrain.__main__ import main
from symtrain.module import SymmetryModule

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ROOT / "configs" / "papers"


def steps(lr: float, gamma: float, every: int) -> Callable[[int], float]:
    """lr x gamma^(epoch // every): the step decays of the papers' own training scripts."""
    return lambda epoch: lr * gamma ** (epoch // every)


# What each paper's code trains with: the optimizer and its settings, the learning rate of each
# epoch (0-based) as that code computes it, the epochs, the batch, and the base pipeline.
PUBLISHED: dict[str, dict[str, Any]] = {
    "zhang2019_imagenet": {  # antialiased-cnns main.py: lr * 0.1 ** (epoch // 30)
        "optimizer": ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}),
        "lr": steps(0.1, 0.1, 30),
        "epochs": 90,
        "batch_size": 64,  # per GPU: four make his 256
        "pipeline": ("resized_crop", True),
    },
    "chaman2021_cifar10": {  # cifar10_training/main.py: SGD, StepLR(100, 0.1), 250 epochs
        "optimizer": ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}),
        "lr": steps(0.1, 0.1, 100),
        "epochs": 250,
        "batch_size": 256,
        "pipeline": ("none", True),
    },
    "chaman2021_digits": {  # the same, scaled to 9 epochs on the digits: x0.1 after 4 and 7
        "optimizer": ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}),
        "lr": lambda epoch: 0.1 * 0.1 ** ((epoch >= 4) + (epoch >= 7)),
        "epochs": 9,
        "batch_size": 256,
        "pipeline": ("none", False),
    },
    "weiler2019_mnist_rot": {  # experiment.py: lr * 0.8 ** (epoch - 15) after epoch 15
        "optimizer": ("Adam", {"lr": 0.015}),
        "lr": lambda epoch: 0.015 * 0.8 ** max(0, epoch - 15),
        "epochs": 40,
        "batch_size": 64,
        "pipeline": ("none", False),
    },
    "weiler2019_cifar10": {  # cifar_single.sh: lr 0.1, x0.2 every 60 epochs, 200 epochs
        "optimizer": ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}),
        "lr": steps(0.1, 0.2, 60),
        "epochs": 200,
        "batch_size": 128,
        "pipeline": ("pad_crop", True),
    },
    "petrini2021_cifar10": {  # optim_loss.py: cosine annealing over 0.8 x 250 epochs
        "optimizer": ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}),
        "lr": lambda epoch: 0.05 * (1 + math.cos(math.pi * epoch / 200)) if epoch <= 200 else None,
        "epochs": 250,
        "batch_size": 128,
        "pipeline": ("pad_crop", True),
        "decay_norms_and_biases": False,
    },
}


def planned(paper: Path, root: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    main(["compare", "--config", str(paper), "--plan", "slurm", "--root", str(root)])
    capsys.readouterr()
    (directory,) = root.iterdir()
    return (directory / "cells.txt").read_text().splitlines()


def printed_config(line: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The full config a cell's command parses to (nothing is instantiated: no data needed)."""
    with pytest.raises(SystemExit) as exited:
        main([*shlex.split(line)[3:], "--print_config"])
    out, err = capsys.readouterr()
    assert exited.value.code in (0, None), err
    return yaml.safe_load(out)


def module_of(model: dict[str, Any]) -> SymmetryModule:
    """The module a cell's model section builds, around a tiny backbone: the recipe does not
    depend on the backbone, and building ImageNet's or escnn's takes long."""
    parser = ArgumentParser()
    parser.add_class_arguments(SymmetryModule, "model")
    tiny = {"class_path": "symtrain.backbones.StandardCNN", "init_args": {"width": 4, "depth": 1}}
    section = {**model, "backbone": tiny, "symmetry": {"class_path": "symtrain.symmetry.NoSymmetry"}}
    return parser.instantiate_classes(parser.parse_object({"model": section})).model


def learning_rates(module: SymmetryModule, epochs: int) -> list[float]:
    """The learning rate of each epoch, stepping the configured scheduler as Lightning does
    (once per epoch for an epoch interval)."""
    module._trainer = SimpleNamespace(
        estimated_stepping_batches=epochs * 10, max_epochs=epochs, limit_val_batches=1.0
    )
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]
    assert scheduler["interval"] == "epoch"
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler["scheduler"].step()
    return rates


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_paper_is_planned_with_its_recipe_and_pipeline(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # a study's config paths are relative to the repository
    paper = PAPERS / f"{name}.yaml"
    spec = yaml.safe_load(paper.read_text())
    lines = planned(paper, tmp_path, capsys)
    cells = len(spec["backbones"]) * len(spec["strategies"]) - len(spec.get("exclude") or [])
    assert len(lines) == cells * len(spec["seeds"])
    published = PUBLISHED[name]
    for line in lines[:cells]:  # one seed stands for all
        config = printed_config(line, capsys)
        assert config["trainer"]["max_epochs"] == published["epochs"]
        data = config["data"]["init_args"]
        assert data["batch_size"] == published["batch_size"]
        assert (data["train_transform"], data["train_flip"]) == published["pipeline"]
        model = config["model"]
        assert model["lr"] is None and model["weight_decay"] is None and model["lr_schedule"] is None
        kind, settings = published["optimizer"]
        assert model["optimizer"]["class_path"].endswith(f".{kind}")
        assert model["decay_norms_and_biases"] == published.get("decay_norms_and_biases", True)
        module = module_of(model)
        rates = learning_rates(module, published["epochs"])
        optimizer = module.configure_optimizers()["optimizer"]
        assert type(optimizer).__name__ == kind
        assert {key: optimizer.defaults[key] for key in settings} == pytest.approx(settings)
        if not model["decay_norms_and_biases"]:  # biases and norms in a group of their own, undecayed
            assert [group["weight_decay"] for group in optimizer.param_groups] == [
                settings["weight_decay"],
                0,
            ]
        expected = [published["lr"](epoch) for epoch in range(published["epochs"])]
        compared = [(got, want) for got, want in zip(rates, expected, strict=True) if want is not None]
        assert [got for got, _ in compared] == pytest.approx([want for _, want in compared], rel=1e-9)


def test_every_paper_file_is_planned_here_and_every_sweep_parses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No paper file goes unchecked: a study has its published recipe above, a sweep of
    pretrained models (Gruver et al. 2022's) parses as measure commands."""
    monkeypatch.chdir(ROOT)
    for paper in sorted(PAPERS.glob("*.yaml")):
        spec = yaml.safe_load(paper.read_text())
        if spec.get("models"):
            lines = planned(paper, tmp_path / paper.stem, capsys)
            assert len(lines) == len(spec["models"]) and all(" measure " in line for line in lines)
        else:
            assert paper.stem in PUBLISHED, f"{paper.name}: add its published recipe to PUBLISHED"


def test_the_step_decay_of_the_papers_code_is_what_a_milestone_schedule_gives() -> None:
    """The helper itself: 0.1 x 0.1^(epoch // 30) at epochs 0, 29, 30, 60."""
    rate = steps(0.1, 0.1, 30)
    assert [rate(e) for e in (0, 29, 30, 60)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
