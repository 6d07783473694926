"""Run directories, experiment tracking, summaries, and loading a trained model back.

Every run gets its own directory under the root (``runs/`` by default)::

    runs/<run_name>/config.yaml       the full config, enough to rebuild the run
    runs/<run_name>/checkpoints/      best.ckpt (by val/acc) and last.ckpt
    runs/<run_name>/metrics.csv       every logged metric
    runs/<run_name>/summary.json      the final figures, in one small file
    runs/wandb/                       the wandb runs of every run under this root
"""

from __future__ import annotations

import json
import netrc
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from symtrain.errors import SymtrainError


@dataclass
class RunOptions:
    """How a run is named, tracked and reported.

    Args:
        name: run name (default: ``{backbone}-{strategy}-{dataset}-s{seed}-{time}``).
        project: wandb project.
        group: wandb group, e.g. one comparison study.
        tags: extra wandb tags (backbone, strategy and dataset are always added).
        wandb: log to wandb (offline unless logged in or ``WANDB_MODE`` says otherwise).
        quiet: no progress bar, model summary or library chatter (for scripts).
        test_after_fit: after ``fit``, test the best checkpoint.
    """

    name: str | None = None
    project: str = "symtrain"
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    wandb: bool = True
    quiet: bool = False
    test_after_fit: bool = True


def default_run_name(
    backbone: str, strategy: str, dataset: str, seed: int | None, subcommand: str = "fit"
) -> str:
    """A readable, sortable name; the timestamp keeps repeated runs apart.

    Examples:
        >>> default_run_name("StandardCNN", "NoSymmetry", "shapes", 0)[:33]
        'standardcnn-nosymmetry-shapes-s0-'
        >>> default_run_name("StandardCNN", "NoSymmetry", "shapes", 0, "test")[:38]
        'standardcnn-nosymmetry-shapes-s0-test-'
    """
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    stage = "" if subcommand == "fit" else f"{subcommand}-"
    return f"{backbone}-{strategy}-{dataset}-s{seed}-{stage}{stamp}".lower()


def create_run_dir(root: str | os.PathLike, name: str) -> Path:
    """Create a fresh directory for one run; a second run with the same name gets a suffix.

    Raises:
        SymtrainError: if the root cannot be written.
    """
    if not re.fullmatch(r"[\w.\-]+", name):
        raise SymtrainError(f"run name {name!r} may only use letters, digits, '.', '_' and '-': rename it")
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            run_dir = root / (name if attempt == 0 else f"{name}-{attempt + 1}")
            try:
                run_dir.mkdir()
            except FileExistsError:
                continue
            # mkdir can succeed on some read-only mounts; writing a file proves it.
            probe = run_dir / ".write-test"
            probe.write_text("")
            probe.unlink()
            return run_dir
    except OSError as error:
        raise SymtrainError(
            f"cannot write run directory under '{root}' ({error.strerror}): "
            "choose a writable one with --trainer.default_root_dir DIR"
        ) from None
    raise SymtrainError(f"too many runs named {name!r} under '{root}': choose another --run.name")


def wandb_mode() -> str:
    """``WANDB_MODE`` when set; otherwise online only for a logged-in user, so nothing prompts."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        logged_in = False
    return "online" if logged_in else "offline"


def remove_run(run_dir: Path) -> None:
    """Remove a run that failed before it produced anything valid, with its wandb files."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb_dir = Path(wandb.run.dir).parent
        wandb.finish(exit_code=1)
        shutil.rmtree(wandb_dir, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)


def to_jsonable(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in sorted(metrics.items())}


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` atomically (a reader never sees half a file)."""
    path = run_dir / "summary.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(summary, indent=2) + "\n")
    partial.replace(path)
    return path


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory's best (else last) checkpoint."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.ckpt", path / "checkpoints" / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise SymtrainError(f"no checkpoints/best.ckpt or checkpoints/last.ckpt in run directory '{path}'")
    if not path.is_file():
        raise SymtrainError(f"checkpoint '{path}' does not exist: pass a .ckpt file or a run directory")
    return path


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", export: bool = False
) -> nn.Module:
    """Load a trained network from a checkpoint or a run directory.

    Args:
        path: a ``.ckpt`` file, or a run directory (its best checkpoint is used).
        map_location: device to load the weights onto.
        export: replace a backbone that can export itself (escnn models) by its plain-torch
            equivalent: same outputs, no escnn at inference.

    Returns:
        The network in eval mode: a plain ``nn.Module`` mapping a float image batch in
        [0, 1], shape (B, C, H, W), to logits (B, num_classes). Normalisation is inside.

    Example::

        net = symtrain.load_model("runs/standardcnn-nosymmetry-shapes-s0-20260101-120000")
        logits = net(images)  # images: floats in [0, 1]
    """
    from symtrain.module import SymmetryModule

    checkpoint = find_checkpoint(path)
    module = SymmetryModule.load_from_checkpoint(checkpoint, map_location=map_location)
    net = module.net.eval()
    if export and hasattr(net.backbone, "export"):
        net.backbone = net.backbone.export()
    return net
