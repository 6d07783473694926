"""Start-up: ``python -m symtrain --help`` (target < 2 s; it imports neither torch nor
Lightning), ``fit --help`` (LightningCLI's full parser) beside the bare ``import
lightning.pytorch`` that it cannot avoid, and a one-step ``fit`` of the quickstart."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from scripts.benchmark.section import Bench, Section
from scripts.benchmark.sizes import Sizes
from scripts.benchmark.table import Table
from scripts.benchmark.timing import wall


def startup(root: Path, accelerator: str, sizes: Sizes) -> dict[str, float]:
    env_python = [sys.executable]
    first_step = [
        *env_python, "-m", "symtrain", "fit", "--config", "configs/quickstart.yaml",
        "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.accelerator", accelerator,
        "--trainer.default_root_dir", str(root), "--metrics.families", "[]", "--run.test_after_fit", "false",
        "--run.wandb", "false", "--run.quiet", "true",
    ]  # fmt: skip
    return {
        "startup_help_s": wall([*env_python, "-m", "symtrain", "--help"], sizes.startup_rounds),
        "startup_fit_help_s": wall([*env_python, "-m", "symtrain", "fit", "--help"], sizes.startup_rounds),
        "import_lightning_s": wall([*env_python, "-c", "import lightning.pytorch"], sizes.startup_rounds),
        "first_step_fit_s": wall(first_step, sizes.startup_rounds),
    }


def run(bench: Bench) -> dict[str, Any]:
    return startup(bench.root, bench.accelerator, bench.sizes)


def rows(table: Table, results: dict[str, Any]) -> None:
    if "startup_help_s" not in results:
        return
    table.row("start-up: `python -m symtrain --help` (s)", results["startup_help_s"], 2.0, False, "{:.2f}")
    fit_help = results["startup_fit_help_s"]
    table.info("`python -m symtrain fit --help`: LightningCLI's full parser (s)", fit_help, "{:.2f}")
    table.info("(its floor) `import lightning.pytorch` alone (s)", results["import_lightning_s"], "{:.2f}")
    table.info("one-step quickstart fit, process start to exit (s)", results["first_step_fit_s"], "{:.2f}")


SECTION = Section("startup", order=50, run=run, rows=rows)
