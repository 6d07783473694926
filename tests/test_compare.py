"""``compare`` runs a backbone x strategy x seed matrix, resumes after an interruption, and reports."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from backbone_configs import tiny_args

from symtrain.__main__ import main
from symtrain.clock import START_ENV
from symtrain.compare import _CellRunner

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def tiny_study(tmp_path: Path) -> Path:
    study = {
        "name": "tiny",
        "base": [str(CONFIGS / "quickstart.yaml"), str(CONFIGS / "trainer" / "debug.yaml")],
        "backbones": {
            "cnn": str(CONFIGS / "backbone" / "cnn.yaml"),
            "blur": str(CONFIGS / "backbone" / "antialiased_blur.yaml"),
        },
        "strategies": {
            "none": str(CONFIGS / "symmetry" / "none.yaml"),
            "augment": str(CONFIGS / "symmetry" / "augment_rotation.yaml"),
        },
        "seeds": [0],
        "args": [
            "--data.init_args.num_train=64",
            "--data.init_args.num_val=32",
            "--data.init_args.num_test=32",
            "--model.backbone.init_args.width=4",
            "--metrics.num_samples=16",
            "--metrics.test_num_samples=16",
            "--run.wandb=false",
            "--run.quiet=true",
        ],
        "root": str(tmp_path / "studies"),
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


CELLS = ["cnn-none-s0", "cnn-augment-s0", "blur-none-s0", "blur-augment-s0"]


@pytest.mark.slow
def test_an_interrupted_matrix_resumes_skipping_finished_cells_and_reports_every_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tiny_study(tmp_path)
    directory = tmp_path / "studies" / "tiny"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "symtrain", "compare", "--config", str(study)]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (directory / CELLS[0] / "summary.json").is_file():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # stop the study while a later cell trains
    out, err = process.communicate(timeout=300)
    assert process.returncode == 143, err.decode()
    assert b"run it again to resume" in err
    assert not (directory / CELLS[-1] / "summary.json").exists()
    finished_at = (directory / CELLS[0] / "summary.json").stat().st_mtime_ns

    main(["compare", "--config", str(study)])
    out = capsys.readouterr().out
    assert "[1/4] cnn + none, seed 0: finished before, skipped" in out
    assert (directory / CELLS[0] / "summary.json").stat().st_mtime_ns == finished_at
    for cell in CELLS:
        assert (directory / cell / "summary.json").is_file(), cell
    html = (directory / "report" / "report.html").read_text()
    markdown = (directory / "report" / "report.md").read_text()
    for cell in CELLS:
        assert cell in html and cell in markdown

    main(["compare", "--config", str(study)])  # everything finished: nothing trains again
    assert capsys.readouterr().out.count("finished before, skipped") == 4


def test_a_stop_between_cells_stops_the_study_before_the_next_cell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started, before = tmp_path / "started", signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited, _CellRunner(fork=True) as runner:
        assert runner.run([sys.executable, "-c", "pass"], tmp_path / "first.log") == 0
        os.kill(os.getpid(), signal.SIGTERM)  # after one cell, before the next
        runner.run([sys.executable, "-c", f"open({str(started)!r}, 'w')"], tmp_path / "second.log")
    assert exited.value.code == 143 and not started.exists()
    assert "compare stopped; run it again to resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before  # the study's handlers are gone


@pytest.mark.parametrize("fork", ["true", "false"])
def test_a_cell_runs_in_a_fresh_process_forked_or_not_and_logs_there(
    fork: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    study = tiny_study(tmp_path)
    only_the_first = "[cnn+augment, blur+none, blur+augment]"
    # as if this study had been started by `python -m symtrain compare` an hour ago
    monkeypatch.setenv(START_ENV, f"{os.getpid()}:{time.time() - 3600}")
    main(["compare", "--config", str(study), "--exclude", only_the_first, "--fork", fork])
    directory = tmp_path / "studies" / "tiny"
    summary = yaml.safe_load((directory / CELLS[0] / "summary.json").read_text())
    assert 0 < summary["seconds"]["startup"] < 600  # measured from the cell's own start
    log = (directory / "logs" / f"{CELLS[0]}.log").read_text()
    assert "no run 'cnn-none-s0'" in log and "LightningCLI's args parameter" not in log
    assert "[1/1] cnn + none, seed 0: done" in capsys.readouterr().out


def test_the_slurm_plan_has_one_array_task_per_cell_with_the_local_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tiny_study(tmp_path)
    main(["compare", "--config", str(study), "--plan", "slurm", "--exclude", "[blur+augment]"])
    directory = tmp_path / "studies" / "tiny"
    lines = (directory / "cells.txt").read_text().splitlines()
    assert len(lines) == 3
    assert all("-m symtrain fit" in line and "--ckpt_path=last" in line for line in lines)
    assert [line.split("--run.name=")[1].split()[0] for line in lines] == CELLS[:3]
    script = (directory / "array.sbatch").read_text()
    assert "#SBATCH --array=0-2" in script and "#SBATCH --requeue" in script
    assert "3 cells: sbatch" in capsys.readouterr().out
    assert not any(path.name.endswith("-s0") for path in directory.iterdir()), "nothing ran"


@pytest.mark.parametrize("study", sorted((CONFIGS / "compare").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_plans_its_cells(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # a study's config paths are relative to the repository
    main(["compare", "--config", str(study), "--plan", "slurm", "--root", str(tmp_path)])
    (directory,) = tmp_path.iterdir()
    lines = (directory / "cells.txt").read_text().splitlines()
    spec = yaml.safe_load(study.read_text())
    if spec.get("models"):  # a sweep: one measure per model
        assert len(lines) == len(spec["models"]) > 1 and all(" measure " in line for line in lines)
        chosen = lines
    else:
        cells = len(spec["backbones"]) * len(spec["strategies"]) - len(spec.get("exclude") or [])
        assert len(lines) == cells * len(spec["seeds"]) > 1  # the whole matrix, less the exclusions
        # one seed stands for all
        chosen = [line for line in lines if f"--seed_everything={spec['seeds'][0]}" in line.split()]
    assert f"{len(lines)} cells: sbatch" in capsys.readouterr().out
    assert all(f"--run.group={directory.name}" in line for line in lines)
    # Every approach's command parses, with every config it stacks.
    for line in chosen:
        with pytest.raises(SystemExit) as exited:
            main([*shlex.split(line)[3:], "--print_config"])
        assert exited.value.code in (0, None), capsys.readouterr().err
    capsys.readouterr()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--exclude", "[cnn+nothing]"], "exclude names unknown cells ['cnn+nothing']"),
        (["--backbones", "{cnn: missing.yaml}"], "config 'missing.yaml' does not exist"),
        (["--seedz", "[1]"], "unrecognized arguments: --seedz"),
        (["--plan", "cloud"], "plan: expected one of"),
    ],
)
def test_study_mistakes_get_one_line(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["compare", "--config", str(tiny_study(tmp_path)), *extra])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "studies").exists()


def test_report_of_something_that_is_not_a_run_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["report", str(tmp_path)])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and str(tmp_path) in err and len(err.strip().splitlines()) == 1, err


def test_a_stop_that_reaches_a_cell_just_ended_still_stops_the_study() -> None:
    """A forked cell is not the study's child: it can be gone before its exit is read, and the
    stop that arrives then must not fail on it."""
    ended = subprocess.Popen(["true"])
    os.waitpid(ended.pid, 0)  # reaped: its pid names no process now
    runner = _CellRunner(fork=False)
    runner.child = SimpleNamespace(pid=ended.pid)
    runner._stop(signal.SIGTERM, None)  # no ProcessLookupError
    assert runner.stopped_by == signal.SIGTERM and runner.forwarded


@pytest.mark.slow
@pytest.mark.parametrize("study,cell", [("cifar10_shift", "aps+none"), ("cifar10_rotation", "wrn+augment")])
def test_one_cell_of_each_gpu_study_trains_tiny_on_the_shapes(
    study: str, cell: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study as shipped (its backbone, strategy and measurement settings) on the shapes
    instead of its data, at the tiny size the backbone declares and a smoke schedule."""
    monkeypatch.chdir(ROOT)
    spec = yaml.safe_load((CONFIGS / "compare" / f"{study}.yaml").read_text())
    backbone, strategy = cell.split("+")
    cells = [f"{b}+{s}" for b in spec["backbones"] for s in spec["strategies"]]
    spec.update(
        base=[str(CONFIGS / "quickstart.yaml"), str(CONFIGS / "trainer" / "debug.yaml")],
        exclude=[other for other in cells if other != cell],
        seeds=[0],
        root=str(tmp_path / "studies"),
    )
    spec["args"] = [arg for arg in spec["args"] if arg.startswith("--metrics.")] + [
        *tiny_args(ROOT / spec["backbones"][backbone]),
        "--data.init_args.num_train=64",
        "--data.init_args.num_val=32",
        "--data.init_args.num_test=32",
        "--metrics.num_samples=8",
        "--metrics.test_num_samples=8",
        "--run.wandb=false",
        "--run.quiet=true",
    ]
    path = tmp_path / f"{study}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    main(["compare", "--config", str(path), "--fork", "false"])
    summary = yaml.safe_load(
        (tmp_path / "studies" / study / f"{backbone}-{strategy}-s0" / "summary.json").read_text()
    )
    assert 0.0 <= summary["metrics"]["test/acc"] <= 1.0
    assert "[1/1]" in capsys.readouterr().out
