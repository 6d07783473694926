"""Training recipes: the default (AdamW + one-cycle, as every run before), any injected optimizer
and scheduler (torch's or timm's), EMA weight averaging; recorded with the run, reloadable, and
refused in one line when they cannot work."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch import Callback, Trainer
from test_checkpoints import TINY as SMALLEST_FIT
from test_recovery import run_in_process as run_cli

import symtrain
from symtrain.backbones import EquivariantCNN, StandardCNN
from symtrain.checkpoints import read_checkpoint
from symtrain.cli import SymtrainCLI, main
from symtrain.data import SyntheticShapes
from symtrain.module import SymmetryModule
from symtrain.recipes import no_decay_parameters
from symtrain.report.collect import TASKS, Approach, Run, read_runs
from symtrain.report.page import tables

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
QUICKSTART = str(CONFIGS / "quickstart.yaml")
# 2 steps per epoch, a few images measured: recipes are what is tested here, not the measures.
TINY = [
    *(arg for arg in SMALLEST_FIT if not arg.startswith("--run.test_after_fit")),
    "--model.backbone.depth=2",
    "--trainer.max_epochs=1",
    "--metrics.num_samples=8",
    "--metrics.test_num_samples=8",
    "--metrics.measures=[acc,invariance_error]",
]
# Training ends cleanly after its first epoch, as an interruption would leave it.
STOP_AFTER_ONE = (
    '--trainer.callbacks+={"class_path": "recovery_callbacks.StopAfter", "init_args": {"epochs": 1}}'
)
# The model keys recipes added: absent from the config and checkpoints of runs written before.
NEW_KEYS = ("optimizer", "lr_scheduler", "lr_interval", "decay_norms_and_biases")


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name != "wandb") if root.exists() else []


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def split_loss(run_dir: Path, checkpoint: Path, split: str) -> float:
    """Cross-entropy of ``checkpoint``'s network over the run's whole ``split`` (the module's loss
    with no label smoothing, a mean over images)."""
    data = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    datamodule = SyntheticShapes(**data["init_args"])
    datamodule.setup("fit" if split == "val" else "test")
    images, labels = datamodule.splits[split].images.float() / 255, datamodule.splits[split].labels
    with torch.no_grad():
        return F.cross_entropy(symtrain.load_model(checkpoint)(images), labels).item()


def tiny_module(**recipe: Any) -> SymmetryModule:
    return SymmetryModule(partial(StandardCNN, width=4, depth=1), num_classes=3, **recipe)


def configured(module: SymmetryModule, stepping_batches: int = 10) -> dict[str, Any]:
    """``configure_optimizers`` as Lightning would call it in a fit of ``stepping_batches`` steps."""
    module._trainer = SimpleNamespace(
        estimated_stepping_batches=stepping_batches, max_epochs=2, limit_val_batches=1.0
    )
    result = module.configure_optimizers()
    return result if isinstance(result, dict) else {"optimizer": result}


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
