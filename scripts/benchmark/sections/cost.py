"""What a fit costs beyond training: a default ``fit`` on real digits (quickstart +
``configs/data/mnist5k.yaml``, wandb offline), process start to exit, split by the run's own
``summary.json`` (``seconds``): start-up, training, validation, equivariance measurements, test,
and the rest (loggers, exit); target: training >= 80% of the wall time. And ``compare``'s
start-up per cell, forked from the import server against a new interpreter per cell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

from scripts.benchmark import ROOT
from scripts.benchmark.section import Bench, Section
from scripts.benchmark.sizes import Sizes
from scripts.benchmark.table import Table

COST_PARTS = ("startup", "sanity", "train", "validate", "measure_val", "measure_test", "test")


def fit_cost(root: Path, accelerator: str, sizes: Sizes) -> dict[str, Any]:
    """A default fit on real digits, timed from outside, split by the run's own summary."""
    command = [
        sys.executable, "-m", "symtrain", "fit", "--config", "configs/quickstart.yaml",
        "--config", "configs/data/mnist5k.yaml", *sizes.cost_flags, "--trainer.accelerator", accelerator,
        "--trainer.default_root_dir", str(root / "cost"), "--run.name", "cost", "--run.quiet", "true",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline"}  # the default for a user who is not logged in
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, env=env)
    total = time.perf_counter() - start
    seconds = json.loads((root / "cost" / "cost" / "summary.json").read_text())["seconds"]
    parts = {part: seconds.get(part, 0.0) for part in COST_PARTS}
    flags = list(sizes.cost_flags)
    epochs = int(flags[flags.index("--trainer.max_epochs") + 1])
    return {"fit_cost": {"total": total, **parts, "other": total - sum(parts.values()), "epochs": epochs}}


def compare_startup(root: Path, sizes: Sizes) -> dict[str, float]:
    """Start-up of each cell of a study of up to two cells (one per round): forked from the
    import server, and fresh."""
    startups = {}
    strategies = {"none": "configs/symmetry/none.yaml", "flip": "configs/symmetry/augment_flip.yaml"}
    strategies = dict(list(strategies.items())[: sizes.rounds])  # --tiny: one cell of each kind
    for fork in (True, False):
        study = {
            "name": f"fork_{fork}".lower(),
            "base": ["configs/quickstart.yaml", "configs/trainer/debug.yaml"],
            "backbones": {"cnn": "configs/backbone/cnn.yaml"},
            "strategies": strategies,
            # start-up is what is timed: no measurements, no test after the fit
            "args": [
                "--data.init_args.num_train=64",
                "--metrics.families=[]",
                "--run.test_after_fit=false",
                "--run.wandb=false",
                "--run.quiet=true",
            ],
            "root": str(root / "compare"),
            "fork": fork,
        }
        path = root / f"{study['name']}.yaml"
        path.write_text(json.dumps(study))
        command = [sys.executable, "-m", "symtrain", "compare", "--config", str(path)]
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        cells = sorted((root / "compare" / study["name"]).glob("*/summary.json"))
        startups[fork] = [json.loads(cell.read_text())["seconds"]["startup"] for cell in cells]
    return {
        "compare_cell_startup_forked_s": median(startups[True]),
        "compare_cell_startup_fresh_s": median(startups[False]),
    }


def run(bench: Bench) -> dict[str, Any]:
    return {
        **fit_cost(bench.root, bench.accelerator, bench.sizes),
        **compare_startup(bench.root, bench.sizes),
    }


def rows(table: Table, results: dict[str, Any]) -> None:
    if "fit_cost" not in results:
        return
    cost = results["fit_cost"]
    epoch = cost["train"] / cost["epochs"]
    table.row("real-digit fit: test-time equivariance measurements / one training epoch",
              cost["measure_test"] / epoch, 2.0, False)  # fmt: skip
    table.info("real-digit fit: measurements during fit (every 2nd epoch on 64 val images) / one epoch",
               cost["measure_val"] / epoch)  # fmt: skip
    loop = (cost["train"] + cost["validate"] + cost["sanity"]) / cost["total"]
    table.info("real-digit fit: training loop (train + validation) / wall time, start to exit", loop)
    table.info("real-digit fit: training epochs alone / wall time", cost["train"] / cost["total"])
    forked, fresh = results["compare_cell_startup_forked_s"], results["compare_cell_startup_fresh_s"]
    table.info("compare: start-up of a cell forked from the import server (s)", forked, "{:.2f}")
    table.info("compare: start-up of a cell in a new interpreter (s)", fresh, "{:.2f}")


def notes(results: dict[str, Any]) -> list[str]:
    if "fit_cost" not in results:
        return []
    cost = results["fit_cost"]
    shares = ", ".join(
        f"{part} {cost[part]:.1f} s ({cost[part] / cost['total']:.0%})" for part in (*COST_PARTS, "other")
    )
    return [f"real-digit fit, {cost['total']:.1f} s in all: {shares}"]


# its split of the fit is the first note below the table
SECTION = Section("cost", order=70, run=run, rows=rows, notes=notes, notes_order=5)
