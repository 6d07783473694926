"""What the recipe tests share: tiny runs, their run directories and summaries, a tiny module and
its configured optimizer."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from test_checkpoints import TINY as SMALLEST_FIT

import symtrain
from symtrain.backbones import StandardCNN
from symtrain.data import SyntheticShapes
from symtrain.module import SymmetryModule

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
