"""Training recipes: the default (AdamW + one-cycle, as every run before) and the runs written
before recipes, EMA weight averaging, and recipes refused in one line when they cannot work.
Injected optimizers and schedulers (torch's or timm's): ``test_recipes_injected.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from recipes_helpers import (
    CONFIGS,
    NEW_KEYS,
    QUICKSTART,
    STOP_AFTER_ONE,
    TINY,
    configured,
    run_dirs,
    split_loss,
    summary,
    tiny_module,
)
from test_recovery import run_in_process as run_cli

import symtrain
from symtrain.checkpoints import read_checkpoint
from symtrain.cli import SymtrainCLI, main
from symtrain.report.collect import read_runs

# ---------------------------------------------------------------------------------------------
# The default recipe, and runs written before recipes could be injected


@pytest.mark.parametrize(
    "settings",
    [{}, {"lr": 0.003, "weight_decay": 0.0001, "lr_schedule": "onecycle"}],
    ids=["unset", "as-configs-set-them-before"],
)
def test_the_default_recipe_is_adamw_with_one_cycle_as_before(settings: dict[str, Any]) -> None:
    module = tiny_module(**settings)
    assert (module.hparams.lr, module.hparams.optimizer) == (settings.get("lr"), None)
    got = configured(module)
    reference = torch.optim.AdamW(module.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=3e-3, total_steps=10)
    assert type(got["optimizer"]) is torch.optim.AdamW
    assert got["optimizer"].state_dict() == reference.state_dict()
    assert got["lr_scheduler"]["interval"] == "step"
    assert got["lr_scheduler"]["scheduler"].state_dict() == schedule.state_dict()
    assert module.recipe()["lr_scheduler"] == "onecycle"
    module = tiny_module(**{**settings, "lr_schedule": "constant"})
    constant = configured(module)
    reference = torch.optim.AdamW(module.parameters(), lr=3e-3, weight_decay=1e-4)
    assert constant["optimizer"].state_dict() == reference.state_dict() and "lr_scheduler" not in constant


@pytest.fixture(scope="module")
def run_before_recipes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run as symtrain wrote it before recipes could be injected: interrupted after its first of
    two epochs, its config and checkpoints holding only the model keys of then (``lr``,
    ``weight_decay``, ``lr_schedule``)."""
    root = tmp_path_factory.mktemp("before")
    args = ["fit", "--config", QUICKSTART, *TINY, "--trainer.max_epochs=2", "--run.test_after_fit=false"]
    with pytest.MonkeyPatch.context() as patch:  # conftest's plain argv, for a module-wide fixture
        patch.setattr("sys.argv", ["symtrain"])
        main([*args, f"--trainer.default_root_dir={root}", STOP_AFTER_ONE])
    (run_dir,) = run_dirs(root)
    then = {"lr": 0.003, "weight_decay": 0.0001, "lr_schedule": "onecycle"}
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["model"] = {k: v for k, v in config["model"].items() if k not in NEW_KEYS} | then
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        checkpoint = read_checkpoint(path)
        hparams = checkpoint["hyper_parameters"]
        checkpoint["hyper_parameters"] = {k: v for k, v in hparams.items() if k not in NEW_KEYS} | then
        torch.save(checkpoint, path)
    return run_dir


def test_a_run_written_before_recipes_loads_tests_and_resumes(
    run_before_recipes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, root = run_before_recipes, run_before_recipes.parent
    assert symtrain.load_model(run_dir)(torch.rand(2, 1, 32, 32)).shape == (2, 8)
    code, err = run_cli(
        ["test", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(run_dir)], capsys
    )
    assert code == 0, err
    (tested,) = [path for path in run_dirs(root) if path != run_dir]
    assert summary(tested)["recipe"] == {
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003, "weight_decay": 0.0001}},
        "lr_scheduler": "onecycle",
        "lr_interval": "step",
        "decay_norms_and_biases": True,
    }
    resume = ["fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last"]
    # The one-cycle safeguard: another length of schedule is refused, in one line.
    code, err = run_cli([*resume, "--trainer.max_epochs=3"], capsys)
    assert code == 2 and "one-cycle learning-rate schedule of 4 steps but this fit plans 6" in err
    code, err = run_cli(resume, capsys)
    assert code == 0, err
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 1
    assert summary(run_dir)["recipe"]["optimizer"]["class_path"] == "torch.optim.AdamW"


# ---------------------------------------------------------------------------------------------
# Weight averaging


@pytest.mark.slow  # wandb's offline run and its reader
def test_ema_is_what_is_validated_tested_checkpointed_and_reloaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A short memory and a large step, so that the average and the raw weights differ clearly.
    ema = [
        "--config",
        str(CONFIGS / "trainer" / "ema.yaml"),
        "--trainer.callbacks.decay=0.5",
        "--model.lr=0.03",
    ]
    args = [
        "fit",
        "--config",
        QUICKSTART,
        *TINY,
        *ema,
        "--trainer.max_epochs=2",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    code, err = run_cli([*args, "--run.wandb=true"], capsys)  # offline (conftest)
    assert code == 0, err
    (run_dir,) = run_dirs(tmp_path)
    recorded = summary(run_dir)
    assert recorded["recipe"]["ema"]["decay"] == 0.5
    assert read_runs([run_dir]).approaches[0].recipe == "AdamW 0.03, onecycle +EMA 0.5"
    # wandb's config has the same recipe (as its terminal dashboard reads the offline run).
    (wandb_run,) = (tmp_path / "wandb").glob("offline-run-*")
    leet = [
        str(Path(sys.executable).parent / "wandb"),
        "leet",
        "inspect",
        "--summary",
        "--json",
        str(wandb_run),
    ]
    shown = subprocess.run(leet, capture_output=True, text=True, timeout=120)
    assert json.loads(shown.stdout)["config"]["recipe"] == recorded["recipe"]
    # Checkpointed as Lightning does it: the average as the weights, the raw ones to resume.
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(last)
    raw, averaged = checkpoint["current_model_state"], checkpoint["state_dict"]
    assert raw.keys() == averaged.keys()
    assert any(not torch.equal(raw[key], averaged[key]) for key in raw)
    # Validated: the last epoch's val/loss is the averaged weights' (last.ckpt, written after it).
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    val_losses = [row.split(",")[header.index("val/loss")] for row in rows[1:]]
    val_loss = float([value for value in val_losses if value][-1])
    assert split_loss(run_dir, last, "val") == pytest.approx(val_loss, abs=1e-6)
    # Tested after the fit, by load_model and by `test`: the best checkpoint's averaged weights.
    test_loss = recorded["metrics"]["test/loss"]
    assert split_loss(run_dir, run_dir, "test") == pytest.approx(test_loss, abs=1e-6)
    code, err = run_cli(
        ["test", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(run_dir)], capsys
    )
    assert code == 0, err
    (tested,) = [path for path in run_dirs(tmp_path) if path != run_dir]
    assert summary(tested)["metrics"]["test/loss"] == pytest.approx(test_loss, abs=1e-6)


def test_weight_averaging_swaps_back_after_the_metrics_measured_the_average(tmp_path: Path) -> None:
    ema = ["--config", str(CONFIGS / "trainer" / "ema.yaml")]
    cli = SymtrainCLI(
        ["--config", QUICKSTART, *TINY, *ema, f"--trainer.default_root_dir={tmp_path}"], run=False
    )
    names = [type(callback).__name__ for callback in cli.trainer.callbacks]
    assert names.index("EquivarianceMetrics") < names.index("EMAWeightAveraging")


# ---------------------------------------------------------------------------------------------
# Recipes that cannot work: one line, exit 2, the fix named, no run directory left

TOP_LEVEL = "optimizer:\n  class_path: torch.optim.SGD\n  init_args:\n    lr: 0.1\n"
PLATEAU = "--model.lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau"
BAD = {
    "not-an-optimizer": (
        ["--model.optimizer=torch.nn.Linear", "--model.lr=null", "--model.weight_decay=null"],
        "model.optimizer: torch.nn.Linear is not a subclass of Optimizer: choose a class of torch.optim",
    ),
    "not-a-scheduler": (
        ["--model.lr_scheduler=torch.nn.Linear", "--model.lr_schedule=null"],
        "model.lr_scheduler: torch.nn.Linear is not a subclass of any of LRScheduler",
    ),
    "plateau-without-validation": (
        [PLATEAU, "--trainer.limit_val_batches=0"],
        "steps on val/loss but this fit does not validate (trainer.limit_val_batches 0): let it validate",
    ),
    "one-cycle-shorter-than-the-fit": (
        ["--model.lr_scheduler=OneCycleLR", "--model.lr_scheduler.max_lr=0.01"]
        + ["--model.lr_scheduler.total_steps=1", "--model.lr_interval=step"],
        "OneCycleLR plans 1 steps but this fit takes 2 steps (trainer.estimated_stepping_batches), and torch "
        "stops at its end: set model.lr_scheduler.init_args.total_steps 2",
    ),
    "timm-counting-epochs-stepped-per-step": (
        ["--config", str(CONFIGS / "optim" / "timm_cosine.yaml"), "--model.lr_scheduler.t_in_epochs=true"],
        "set model.lr_scheduler.init_args.t_in_epochs false",
    ),
    "lr-with-an-injected-optimizer": (
        ["--model.optimizer=torch.optim.SGD", "--model.optimizer.lr=0.1"],
        "model.lr 0.003 does not apply with model.optimizer SGD: set model.lr null",
    ),
    "lr-schedule-with-an-injected-scheduler": (
        ["--model.lr_scheduler=StepLR", "--model.lr_scheduler.step_size=1", "--model.lr_schedule=constant"],
        "model.lr_schedule constant does not apply with model.lr_scheduler StepLR: set model.lr_schedule",
    ),
    "top-level-optimizer-in-a-config": (
        ["--config", "TOP_LEVEL"],
        "a top-level optimizer is not a setting: give it as model.optimizer",
    ),
    "top-level-lr-scheduler-flag": (
        ["--lr_scheduler=torch.optim.lr_scheduler.StepLR"],
        "a top-level lr_scheduler is not a setting: give it as model.lr_scheduler",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_recipe_that_cannot_work_is_one_line_naming_the_fix(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags, message = BAD[case]
    (tmp_path / "top.yaml").write_text(TOP_LEVEL)
    flags = [str(tmp_path / "top.yaml") if flag == "TOP_LEVEL" else flag for flag in flags]
    root = tmp_path / "runs"
    code, err = run_cli(
        ["fit", "--config", QUICKSTART, *TINY, *flags, f"--trainer.default_root_dir={root}"], capsys
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message in err
    assert run_dirs(root) == []


def test_a_resume_with_another_recipe_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["fit", "--config", QUICKSTART, *TINY, f"--trainer.default_root_dir={tmp_path}"]
    code, err = run_cli([*args, "--run.test_after_fit=false"], capsys)
    assert code == 0, err
    (run_dir,) = run_dirs(tmp_path)
    config = (run_dir / "config.yaml").read_text()
    sgd = ["--config", str(CONFIGS / "optim" / "sgd_multistep.yaml"), "--trainer.max_epochs=2"]
    code, err = run_cli([*args, *sgd, "--ckpt_path", "last"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "trained with AdamW + onecycle but this fit configures SGD + MultiStepLR" in err
    assert (run_dir / "config.yaml").read_text() == config and run_dirs(tmp_path) == [run_dir]
