"""Killed, pre-empted and diverging runs keep their work and resume; runs are reproducible.

Processes that must die run as subprocesses; they kill themselves at a chosen step with a
real signal (tests/recovery_callbacks.py), so the timing does not depend on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from symtrain.cli import main
from symtrain.runs import RunDirectory

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
# 8 steps per epoch, 3 epochs: a kill at step 12 lands mid-way through the second epoch.
SMALL = [
    "--data.num_train=256",
    "--data.num_val=64",
    "--data.num_test=64",
    "--data.batch_size=32",
    "--model.backbone.width=4",
    "--model.backbone.depth=2",
    "--trainer.max_epochs=3",
    "--metrics.num_samples=32",
    "--metrics.test_num_samples=32",
    "--metrics.measures=[acc, invariance_error]",
    "--run.wandb=false",
    "--run.quiet=true",
]
STEPS_PER_EPOCH = 8


def callback(name: str, **init_args: object) -> str:
    spec = {"class_path": f"recovery_callbacks.{name}", "init_args": init_args}
    return f"--trainer.callbacks+={json.dumps(spec)}"


def fit_args(root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", QUICKSTART, *SMALL, f"--trainer.default_root_dir={root}", *extra]


def run_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def run_subprocess(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # One thread, as in this process (conftest): float sums then add up in the same order.
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "tests"),
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    command = [sys.executable, "-m", "symtrain", *args]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=400)


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name != "wandb")


def summary_metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "summary.json").read_text())["metrics"]


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


CONFIGS = ROOT / "configs"
# Every kind of schedule resumes exactly: the default one-cycle (per step), torch's MultiStepLR per
# epoch with a milestone at the epoch the kill interrupts, timm's cosine per step with its warm-up
# spanning the kill, and EMA weight averaging (whose average must be restored, not restarted).
RECIPES = {
    "default": ["--config", str(CONFIGS / "symmetry" / "augment_rotation.yaml")],
    "sgd_multistep": [
        "--config",
        str(CONFIGS / "optim" / "sgd_multistep.yaml"),
        "--model.lr_scheduler.init_args.milestones=[1, 2]",
    ],
    "timm_cosine": [
        "--config",
        str(CONFIGS / "optim" / "timm_cosine.yaml"),
        "--model.lr_scheduler.init_args.t_initial=24",
        "--model.lr_scheduler.init_args.warmup_t=10",
    ],
    "ema": ["--config", str(CONFIGS / "trainer" / "ema.yaml")],
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_a_killed_fit_resumes_with_ckpt_path_last_to_the_same_result(
    recipe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    augment = RECIPES[recipe]
    killed = run_subprocess(fit_args(tmp_path / "runs", *augment, callback("SignalAt", step=12)), tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (run_dir,) = run_dirs(tmp_path / "runs")
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == STEPS_PER_EPOCH
    assert not (run_dir / "summary.json").exists()

    code, err = run_in_process(fit_args(tmp_path / "runs", *augment, "--ckpt_path", "last"), capsys)
    assert code == 0, err
    assert run_dirs(tmp_path / "runs") == [run_dir], "the resumed fit continues in the same run directory"
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 3 * STEPS_PER_EPOCH

    code, err = run_in_process(fit_args(tmp_path / "uninterrupted", *augment), capsys)
    assert code == 0, err
    (reference,) = run_dirs(tmp_path / "uninterrupted")
    assert summary_metrics(run_dir) == summary_metrics(reference)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGUSR1"])
def test_sigterm_and_sigusr1_save_a_checkpoint_and_exit_cleanly(
    signal_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stopped = run_subprocess(
        fit_args(tmp_path / "runs", callback("SignalAt", step=11, signal_name=signal_name)), tmp_path
    )
    expected_code = 128 + int(getattr(signal, signal_name))
    assert stopped.returncode == expected_code, stopped.stderr
    (run_dir,) = run_dirs(tmp_path / "runs")
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert "Traceback" not in stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"symtrain: stopped by {signal_name}: saved {checkpoint}; "
        f"resume with the same command and --ckpt_path {checkpoint}"
    )
    assert checkpoint_step(checkpoint) == 11, "saved at the step boundary where the signal arrived"

    code, err = run_in_process(fit_args(tmp_path / "runs", "--ckpt_path", str(checkpoint)), capsys)
    assert code == 0, err
    assert run_dirs(tmp_path / "runs") == [run_dir]
    assert checkpoint_step(checkpoint) == 3 * STEPS_PER_EPOCH
    assert "test/acc" in summary_metrics(run_dir), "the resumed fit is tested like any other"


def test_slurm_requeue_goes_through_lightning_and_the_requeued_job_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0"}
    # SLURM warns with SIGUSR1 ahead of its limit, then requeues (SIGTERM) once the job is requeued.
    warn_then_stop = [
        callback("SignalAt", step=10, signal_name="SIGUSR1"),
        callback("SignalAt", step=12, signal_name="SIGTERM"),
    ]
    path = f"{bin_dir}:{os.environ['PATH']}"
    first = run_subprocess(fit_args(tmp_path / "runs", *warn_then_stop), tmp_path, PATH=path, **slurm)
    assert first.returncode == 143, first.stderr
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    (run_dir,) = run_dirs(tmp_path / "runs")
    assert run_dir.name.endswith("-j4242")
    assert checkpoint_step(run_dir / "hpc_ckpt_1.ckpt") == 10

    for key, value in {**slurm, "SLURM_RESTART_COUNT": "1", "PATH": path}.items():
        monkeypatch.setenv(key, value)
    code, err = run_in_process(fit_args(tmp_path / "runs"), capsys)  # the same command, requeued
    assert code == 0, err
    assert run_dirs(tmp_path / "runs") == [run_dir]
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 3 * STEPS_PER_EPOCH


def test_a_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_in_process(fit_args(tmp_path / "runs", callback("PoisonAt", step=13)), capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    (run_dir,) = run_dirs(tmp_path / "runs")
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert "not finite (NaN or inf) at step 13 (epoch 1)" in err
    assert f"the last good checkpoint is kept: {checkpoint}" in err
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["global_step"] == STEPS_PER_EPOCH
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point())


def test_the_same_config_and_seed_give_identical_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    augment = ["--config", str(ROOT / "configs" / "symmetry" / "augment_rotation.yaml")]
    short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=4"]
    for name in ("a", "b"):
        code, err = run_in_process(fit_args(tmp_path / name, *augment, *short), capsys)
        assert code == 0, err
    (first,), (second,) = run_dirs(tmp_path / "a"), run_dirs(tmp_path / "b")
    assert summary_metrics(first) == summary_metrics(second)
    code, err = run_in_process(fit_args(tmp_path / "c", *augment, *short, "--seed_everything=1"), capsys)
    assert code == 0, err
    (other_seed,) = run_dirs(tmp_path / "c")
    assert summary_metrics(other_seed) != summary_metrics(first), "the seed must matter"


def test_resuming_finds_runs_by_their_config_and_refuses_a_checkpoint_that_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--run.test_after_fit=false"]
    runs = tmp_path / "runs"
    code, err = run_in_process(fit_args(runs, *short, "--ckpt_path", "last"), capsys)
    assert code == 0, err
    assert "to resume: starting a new run" in err
    (run_dir,) = run_dirs(runs)

    # The same backbone name at another width: the newest such run is found, and refused.
    code, err = run_in_process(
        fit_args(runs, *short, "--ckpt_path", "last", "--model.backbone.width=8"), capsys
    )
    assert code == 2
    assert f"checkpoint '{run_dir / 'checkpoints' / 'last.ckpt'}' was trained with backbone" in err
    assert "StandardCNN(width=4) but this run builds StandardCNN(width=8)" in err
    assert run_dirs(runs) == [run_dir] and (run_dir / "checkpoints" / "last.ckpt").is_file()

    # test --ckpt_path best: the best checkpoint of the newest matching fit, in a new test run.
    test_args = ["test", "--config", QUICKSTART, *SMALL, f"--trainer.default_root_dir={runs}"]
    code, err = run_in_process([*test_args, "--ckpt_path", "best"], capsys)
    assert code == 0, err
    (test_run,) = [path for path in run_dirs(runs) if path != run_dir]
    assert "-test-" in test_run.name and (test_run / "summary.json").is_file()
    code, err = run_in_process([*test_args, "--ckpt_path", "last", "--seed_everything=5"], capsys)
    assert code == 2 and "no run 'standardcnn-nosymmetry-shapes-s5-*' with a checkpoint" in err


def test_a_run_killed_while_testing_after_its_fit_has_no_summary_so_it_reads_as_unfinished(
    tmp_path: Path,
) -> None:
    killed = run_subprocess(fit_args(tmp_path / "runs", callback("KillAtTest")), tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (run_dir,) = run_dirs(tmp_path / "runs")
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    # compare skips cells whose run has a summary: a half-done command must not leave one.
    assert not (run_dir / "summary.json").exists()


def test_a_failed_resume_never_removes_the_run_it_continues_and_puts_its_config_back(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("first\n")
    (run_dir / "hpc_ckpt_1.ckpt").write_text("")  # its only checkpoint, outside checkpoints/
    run = RunDirectory.open(tmp_path, "unused", resume=run_dir)
    (run_dir / "config.yaml").write_text("resuming\n")
    run.abandon()
    assert (run_dir / "config.yaml").read_text() == "first\n"
    assert (run_dir / "hpc_ckpt_1.ckpt").is_file()

    fresh = RunDirectory.open(tmp_path, "fresh")
    assert fresh.path == tmp_path / "fresh" and not fresh.resumed
    fresh.abandon()  # nothing saved yet: nothing worth keeping
    assert not fresh.path.exists()
