"""``python -m symtrain compare --config configs/compare/shapes.yaml`` and ``python -m symtrain report``.

A study is a matrix of backbones x strategies x seeds over one data config, or a sweep of models
measured on one data config (``models``: Gruver et al. 2022's way of comparing a model zoo).
Each cell is an ordinary ``symtrain fit`` (or ``symtrain measure``) run with a fixed name under
``<root>/<study>/``, so a study is resumable (finished cells are skipped, an interrupted fit
continues from its last checkpoint) and each cell is one command that a cluster can run on its
own (``--plan slurm`` writes a SLURM array job over the same cells). In a sweep, a model that
fails is reported in its row of the report and the others go on. The report is built from the
run directories alone.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from jsonargparse import ActionConfigFile, ArgumentParser

from symtrain.clock import note_process_start, without_start
from symtrain.errors import SymtrainError, error_line, parse_arguments
from symtrain.study import Study, cells, check_study, fit_command, study_dir


def run_locally(study: Study) -> list[Path]:
    """Run the unfinished cells one after the other; return every cell's run directory."""
    todo = cells(study)
    logs = study_dir(study) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    failed = []
    with _CellRunner(study.fork) as runner:
        for index, cell in enumerate(todo, 1):
            run_dir = study_dir(study) / cell.run_name
            head = f"[{index}/{len(todo)}] {cell.approach}" + ("" if cell.model else f", seed {cell.seed}")
            if (run_dir / "summary.json").is_file():
                print(f"{head}: finished before, skipped", flush=True)
                continue
            if run_dir.is_dir() and (cell.model or not any((run_dir / "checkpoints").glob("*.ckpt"))):
                shutil.rmtree(run_dir)  # nothing to resume: a failed or stopped measurement, or a fit
            log = logs / f"{cell.run_name}.log"
            doing = "measuring" if cell.model else "resuming" if run_dir.is_dir() else "training"
            print(f"{head}: {doing} (log: {log})", flush=True)
            started = time.perf_counter()
            command = fit_command(study, cell)
            code = runner.run(command, log)
            if code != 0:
                last = log.read_text(errors="replace").strip().splitlines()[-1:]
                reason = (last[0] if last else f"exit code {code}").replace("symtrain: error: ", "")
                if cell.model is not None:  # one model's failure is its row; the sweep goes on
                    record_failure(
                        run_dir, cell.model, reason if code == 2 else f"{reason} (see {log})", command
                    )
                    failed.append(cell.approach)
                    print(f"{head}: failed: {reason}", flush=True)
                    continue
                if code == 2:  # a user mistake: every other cell would make it too
                    raise SymtrainError(f"cell {cell.run_name}: {reason}")
                raise SymtrainError(
                    f"cell {cell.run_name} failed (exit code {code}): see {log}; "
                    "run compare again to resume it"
                )
            print(f"{head}: done in {time.perf_counter() - started:.0f} s", flush=True)
    if failed:
        print(f"{len(failed)} of {len(todo)} models failed ({', '.join(failed)}): see the report", flush=True)
    return [study_dir(study) / cell.run_name for cell in todo]


def record_failure(run_dir: Path, model: str, reason: str, command: list[str]) -> Path:
    """``failure.json`` in the model's run directory (what was left of the failed run goes): the
    report shows the model's row with the reason, and the next ``compare`` measures it again."""
    from symtrain.runs import write_atomically

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    failure = {"model": model, "reason": reason, "command": shlex.join(command)}
    return write_atomically(run_dir / "failure.json", json.dumps(failure, indent=2) + "\n")


def _signal(pid: int, number: int) -> None:
    """Pass a stop on to a cell; one that has just ended (a forked cell is not this process's
    child, so it can be gone before its exit is read) has nothing left to stop."""
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


class _CellRunner:
    """Runs cells one at a time. SIGTERM or SIGINT, whenever it comes while the study runs, stops
    the study: the running cell is stopped the same way (it saves a checkpoint and exits), no
    further cell starts, and the study exits with 128 + the signal's number."""

    def __init__(self, fork: bool) -> None:
        self.fork = fork
        self.child: _ForkedCell | subprocess.Popen | None = None
        self.stopped_by: int | None = None
        self.forwarded = False
        self.log: Path | None = None

    def __enter__(self) -> _CellRunner:
        self._previous = {
            number: signal.signal(number, self._stop) for number in (signal.SIGTERM, signal.SIGINT)
        }
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _stop(self, number: int, frame: object) -> None:
        self.stopped_by = self.stopped_by or number
        if self.child is not None:
            self.forwarded = True
            _signal(self.child.pid, number)

    def run(self, command: list[str], log: Path) -> int:
        """Run one cell to its end and return its exit code."""
        self._exit_if_stopped()
        self.log = log
        self.child = _start_cell(command, log, self.fork)
        try:
            if self.stopped_by is not None and not self.forwarded:  # stopped while it started
                self.forwarded = True
                _signal(self.child.pid, self.stopped_by)
            code = self.child.wait()
        finally:
            self.child = None
        self._exit_if_stopped()
        return code

    def _exit_if_stopped(self) -> None:
        if self.stopped_by is not None:
            where = f" (log: {self.log})" if self.log else ""
            sys.stderr.write(f"symtrain: compare stopped; run it again to resume{where}\n")
            raise SystemExit(128 + self.stopped_by)


class _ForkedCell:
    """A cell in a process forked from a server that imported torch and Lightning once
    (multiprocessing's forkserver): still a fresh process per cell (nothing carries over from
    one cell to the next, and DDP relaunches the cell's own command), without paying for those
    imports at every cell. Waits and reports exit codes as :class:`subprocess.Popen` does."""

    def __init__(self, command: list[str], log: Path) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["symtrain.cli"])  # read when the server starts: the first cell
        args = command[command.index("symtrain") + 1 :]
        self.process = context.Process(
            target=_run_in_child, args=(args, str(log), os.getcwd(), dict(os.environ)), name="symtrain-cell"
        )
        self.process.start()
        self.pid = self.process.pid

    def wait(self) -> int:
        self.process.join()
        return self.process.exitcode


def _run_in_child(args: list[str], log: str, cwd: str, environ: dict[str, str]) -> None:
    """One ``symtrain`` command in a forked child, as if started from this directory and
    environment, its output appended to ``log``. Exits as the command would."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environ)
    note_process_start(again=True)
    with open(log, "a") as output:
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
    # The command line, as a fresh process would have it: the CLI reads it, and Lightning's DDP
    # launcher runs it again (this child's __main__ is the server's, not symtrain's).
    sys.argv = [str(Path(__file__).with_name("__main__.py")), *args]
    from symtrain.__main__ import main

    try:
        main()
    finally:
        if (wandb := sys.modules.get("wandb")) is not None:
            wandb.teardown()  # a forked child skips the atexit hook that stops wandb's service
        sys.stdout.flush()
        sys.stderr.flush()


def _start_cell(command: list[str], log: Path, fork: bool) -> _ForkedCell | subprocess.Popen:
    """Start one cell, forked from the import server where asked and the platform forks safely
    (Linux: macOS's system frameworks do not survive a fork), else as a new interpreter."""
    if fork and sys.platform == "linux" and command[1:3] == ["-m", "symtrain"]:
        return _ForkedCell(command, log)
    with log.open("a") as output:
        return subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=without_start(dict(os.environ)),  # the cell's start-up is its own, not the study's
        )


def write_slurm_plan(study: Study) -> Path:
    """``cells.txt`` (one ``fit`` command per line) and ``array.sbatch`` (one array task per cell,
    requeued on pre-emption; each task resumes its cell)."""
    directory = study_dir(study)
    directory.mkdir(parents=True, exist_ok=True)
    commands = [shlex.join(fit_command(study, cell, python="python")) for cell in cells(study)]
    (directory / "cells.txt").write_text("\n".join(commands) + "\n")
    script = directory / "array.sbatch"
    script.write_text(
        f"""#!/bin/bash
# One array task per cell of study '{study.name}': sbatch {script}
# Afterwards: python -m symtrain report {directory}/*/ --out {directory}/report
#SBATCH --job-name=symtrain-{study.name}
#SBATCH --array=0-{len(commands) - 1}
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --signal=SIGUSR1@90
#SBATCH --requeue
#SBATCH --output={directory}/logs/slurm-%A_%a.out
set -euo pipefail
cd "${{SLURM_SUBMIT_DIR}}"
source .venv/bin/activate
export PYTHONHASHSEED=0
eval "$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {directory}/cells.txt)"
"""
    )
    (directory / "logs").mkdir(exist_ok=True)
    return script


def compare_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m symtrain compare", description=__doc__, exit_on_error=False)
    parser.add_argument(
        "--config", action=ActionConfigFile, help="a study file, e.g. configs/compare/shapes.yaml"
    )
    parser.add_class_arguments(Study, nested_key=None)
    parser.add_argument(
        "--plan",
        type=Literal["local", "slurm"],
        default="local",
        help="local: run the cells here, then the report; slurm: write a SLURM array job over the cells",
    )
    return parser


def report_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m symtrain report", exit_on_error=False)
    parser.add_argument(
        "run_dirs", type=str, nargs="+", help="run directories, or directories holding runs (a study)"
    )
    parser.add_argument(
        "--out", type=str | None, default=None, help="output directory (default: <parent>/report)"
    )
    parser.add_argument("--title", type=str, default="symtrain comparison")
    return parser


def parse_study(args: list[str]) -> tuple[Study, str]:
    """The study and the plan (``local`` or ``slurm``) that ``compare`` arguments describe."""
    parsed = parse_arguments(compare_parser(), args)
    plan = parsed.pop("plan")
    parsed.pop("config", None)
    return Study(**parsed), plan


def compare_main(args: list[str]) -> None:
    study, plan = parse_study(args)
    check_study(study)
    if plan == "slurm":
        script = write_slurm_plan(study)
        print(f"{len(cells(study))} cells: sbatch {script}")
        return
    run_dirs = run_locally(study)
    build = _report_builder()
    outputs = build(run_dirs, study_dir(study) / "report", title=f"symtrain comparison: {study.name}")
    print(f"report: {outputs['html']}")


def report_main(args: list[str]) -> None:
    parsed = parse_arguments(report_parser(), args)
    run_dirs = [run for path in map(Path, parsed["run_dirs"]) for run in _runs_in(path)]
    parents = {d.resolve().parent for d in run_dirs}
    out = (
        Path(parsed["out"])
        if parsed["out"]
        else (parents.pop() if len(parents) == 1 else Path(".")) / "report"
    )
    outputs = _report_builder()(run_dirs, out, title=parsed["title"])
    print(f"report: {outputs['html']}")


def _runs_in(path: Path) -> list[Path]:
    """``path`` itself when it is a run directory; else the run directories inside it (a study
    or a runs root), else ``path`` (for the report to name it as not a run)."""
    from symtrain.report.collect import is_run_dir

    if is_run_dir(path) or not path.is_dir():
        return [path]
    runs = sorted(child for child in path.iterdir() if is_run_dir(child))
    return runs or [path]


def _report_builder():  # noqa: ANN202  (matplotlib and the models load only when a report is built)
    from symtrain.report import build_report

    return build_report


def data_main(args: list[str]) -> None:
    from symtrain.data.commands import data_main as main

    main(args)


def measure_main(args: list[str]) -> None:
    from symtrain.measurement import measure_main as main

    main(args)


COMMANDS = {"compare": compare_main, "report": report_main, "data": data_main, "measure": measure_main}


def run_command(args: list[str]) -> None:
    """Run ``compare``, ``report``, ``data`` or ``measure`` (``args[0]``); a user mistake ends in one line and
    exit code 2."""
    try:
        COMMANDS[args[0]](args[1:])
    except SymtrainError as error:
        sys.stderr.write(f"symtrain: error: {error_line(error)}\n")
        raise SystemExit(2) from None
