"""Injected training recipes, from config alone: any optimizer and scheduler (torch's or timm's),
each shipped optim config trained, checkpointed and rebuilt; schedulers stepped as their own
training loops step them; norms and biases out of weight decay; the report names each recipe."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer
from recipes_helpers import (
    CONFIGS,
    QUICKSTART,
    TINY,
    configured,
    run_dirs,
    split_loss,
    summary,
)
from test_recovery import run_in_process as run_cli

from symtrain.backbones import EquivariantCNN, StandardCNN
from symtrain.checkpoints import read_checkpoint
from symtrain.data import SyntheticShapes
from symtrain.module import SymmetryModule
from symtrain.recipes import no_decay_parameters
from symtrain.report.collect import TASKS, Approach, Run, read_runs
from symtrain.report.page import tables

# ---------------------------------------------------------------------------------------------
# Injected recipes, from config alone

OPTIM = {
    "sgd_multistep": {
        "optimizer": "torch.optim.SGD",
        "scheduler": "torch.optim.lr_scheduler.MultiStepLR",
        "interval": "epoch",
        "text": "SGD 0.1 m0.9, MultiStepLR@epoch",
    },
    "timm_cosine": {
        "optimizer": "torch.optim.AdamW",
        "scheduler": "timm.scheduler.CosineLRScheduler",
        "interval": "step",
        "text": "AdamW 3e-3, CosineLRScheduler@step",
    },
}


@pytest.mark.parametrize("name", list(OPTIM))
def test_each_optim_config_trains_from_config_alone_and_its_checkpoint_rebuilds_it(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = OPTIM[name]
    config = str(CONFIGS / "optim" / f"{name}.yaml")
    code, err = run_cli(
        ["fit", "--config", QUICKSTART, "--config", config, *TINY, f"--trainer.default_root_dir={tmp_path}"],
        capsys,
    )
    assert code == 0, err
    (run_dir,) = run_dirs(tmp_path)
    # The saved config shows only what applied.
    model = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
    assert (model["lr"], model["weight_decay"], model["lr_schedule"]) == (None, None, None)
    recipe = summary(run_dir)["recipe"]
    assert recipe["optimizer"]["class_path"] == expected["optimizer"] == model["optimizer"]["class_path"]
    assert recipe["lr_scheduler"]["class_path"] == expected["scheduler"]
    assert recipe["lr_interval"] == expected["interval"]
    assert read_runs([run_dir]).approaches[0].recipe == expected["text"]

    # The optimizer in the checkpoint is the configured one, with its settings and its state.
    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    (optimizer,) = checkpoint["optimizer_states"]
    first_state = next(iter(optimizer["state"].values()))
    groups = optimizer["param_groups"]
    if name == "sgd_multistep":
        assert groups[0]["momentum"] == 0.9 and groups[0]["weight_decay"] == 1e-4 and len(groups) == 1
        assert "momentum_buffer" in first_state
        assert checkpoint["lr_schedulers"][0]["milestones"] == {30: 1, 60: 1}
    else:
        assert "exp_avg" in first_state and groups[0]["weight_decay"] == 0.05
        assert groups[1]["weight_decay"] == 0.0  # biases and norms (decay_norms_and_biases: false)
        assert checkpoint["lr_schedulers"][0]["t_initial"] == 282
    assert checkpoint["hyper_parameters"]["optimizer"] == model["optimizer"]

    # The injected callables round-trip through the checkpoint: load_model rebuilds the module,
    # `test` rebuilds it from the run's config or from the checkpoint's own hyperparameters.
    best = run_dir / "checkpoints" / "best.ckpt"
    assert split_loss(run_dir, best, "test") == pytest.approx(
        summary(run_dir)["metrics"]["test/loss"], abs=1e-5
    )
    for test_args in (
        ["--config", str(run_dir / "config.yaml"), "--ckpt_path", str(run_dir)],
        ["--config", QUICKSTART, *TINY, "--ckpt_path", str(best)],
    ):
        code, err = run_cli(["test", *test_args, f"--trainer.default_root_dir={tmp_path / 'tests'}"], capsys)
        assert code == 0, err
    for tested in run_dirs(tmp_path / "tests"):
        assert summary(tested)["recipe"] == recipe
        assert summary(tested)["metrics"]["test/loss"] == pytest.approx(
            summary(run_dir)["metrics"]["test/loss"], abs=1e-6
        )


def test_a_plateau_scheduler_steps_on_the_validation_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plateau = [
        "--model.lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau",
        "--model.lr_scheduler.patience=0",
    ]
    args = [
        "fit",
        "--config",
        QUICKSTART,
        *TINY,
        *plateau,
        "--trainer.max_epochs=2",
        "--run.test_after_fit=false",
    ]
    code, err = run_cli([*args, f"--trainer.default_root_dir={tmp_path}"], capsys)
    assert code == 0, err
    (run_dir,) = run_dirs(tmp_path)
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    val_losses = [float(v) for row in rows[1:] if (v := row.split(",")[header.index("val/loss")])]
    (state,) = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["lr_schedulers"]
    # It stepped on the logged val/loss (the last checkpoint is written before the last epoch's step).
    assert state["last_epoch"] >= 1 and state["best"] == pytest.approx(val_losses[0], abs=1e-6)


class RecordLearningRate(Callback):
    """The learning rate each training step runs with."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer: Trainer, *args: object) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_timm_schedulers_step_as_timms_own_training_loop_steps_them(interval: str) -> None:
    from timm.scheduler import CosineLRScheduler

    per_step = interval == "step"
    length = {"t_initial": 9 if per_step else 3, "warmup_t": 3 if per_step else 1}
    scheduler = partial(CosineLRScheduler, **length, warmup_lr_init=1e-3, t_in_epochs=not per_step)
    optimizer = partial(torch.optim.SGD, lr=0.1)
    data = SyntheticShapes(num_train=48, num_val=16, num_test=16, batch_size=16)
    module = SymmetryModule(
        partial(StandardCNN, width=4, depth=1),
        num_classes=data.num_classes,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        lr_interval=interval,
    )
    recorder = RecordLearningRate()
    trainer = Trainer(
        max_epochs=3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    trainer.fit(module, datamodule=data)
    # timm's train.py: step_update(num_updates) after each update, step(epoch + 1) after each epoch.
    reference = optimizer([torch.zeros(1, requires_grad=True)])
    timm_scheduler, expected, updates = scheduler(reference), [], 0
    for epoch in range(3):
        for _ in range(3):
            expected.append(reference.param_groups[0]["lr"])
            updates += 1
            timm_scheduler.step_update(num_updates=updates)
        timm_scheduler.step(epoch=epoch + 1)
    assert recorder.rates == pytest.approx(expected)
    assert len(set(recorder.rates)) == (9 if per_step else 3)  # it did move, at the interval


def test_timm_recipes_leave_norms_and_biases_out_of_weight_decay_but_not_escnn_weights() -> None:
    module = SymmetryModule(
        partial(EquivariantCNN, group="C", order=4, width=2, depth=1, kernel_size=3),
        num_classes=3,
        decay_norms_and_biases=False,
    )
    exempt = no_decay_parameters(module)
    names = dict(module.named_parameters())
    assert exempt and all(name.endswith("bias") or "norm" in name.lower() or "bn" in name for name in exempt)
    # escnn's convolution weights are vectors of basis coefficients: timm's one-dimension rule
    # would exempt them, this one does not.
    assert any(names[name].ndim == 1 for name in set(names) - exempt)
    decayed, undecayed = configured(module)["optimizer"].param_groups
    assert (undecayed["weight_decay"], decayed["weight_decay"]) == (0.0, 1e-4)
    assert len(decayed["params"]) + len(undecayed["params"]) == len(names)


def test_the_reports_first_table_names_each_approachs_recipe() -> None:
    sgd = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}}
    runs = {
        "before": {},  # a summary from before recipes were recorded: the default then
        "sgd": {"recipe": {"optimizer": sgd, "lr_scheduler": "constant", "lr_interval": None}},
        "zoo": {"measured": {"source": "timm", "model": "resnet18"}},  # measured, not trained here
    }
    approaches = [
        Approach(name, [Run(Path(name), {"backbone": "b", "strategy": "s", **fields})])
        for name, fields in runs.items()
    ]
    ((_, header, rows), *_) = tables(approaches, [], TASKS["classification"])
    column = header.index("recipe")
    assert header[column - 1] == "base pipeline"
    assert [row[column] for row in rows] == ["AdamW, onecycle", "SGD 0.1 m0.9, constant", "not recorded"]
