"""The runs layer: what a run is called, the directory it writes into, which run
``--ckpt_path last`` continues, and loading a trained model back.

Every run gets its own directory under the root (``runs/`` by default)::

    runs/<run_name>/config.yaml       the full config, enough to rebuild the run
    runs/<run_name>/checkpoints/      best.ckpt (by val/acc) and last.ckpt
    runs/<run_name>/metrics.csv       every logged metric
    runs/<run_name>/summary.json      the final figures, in one small file
    runs/wandb/                       the wandb runs of every run under this root
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch import nn

from symtrain.errors import SymtrainError


@dataclass
class RunOptions:
    """How a run is named, tracked and reported.

    Args:
        name: run name (default: ``{backbone}-{strategy}-{dataset}-s{seed}-{time}``).
        approach: label of the compared approach this run belongs to (set by ``compare``;
            default ``{backbone} + {strategy}``), a flat key in wandb and summary.json.
        project: wandb project.
        group: wandb group, e.g. one comparison study.
        tags: extra wandb tags (backbone, strategy and dataset are always added).
        wandb: log to wandb (offline unless logged in or ``WANDB_MODE`` says otherwise).
        quiet: no progress bar, model summary or library chatter (for scripts).
        test_after_fit: after ``fit``, test the best checkpoint.
    """

    name: str | None = None
    approach: str | None = None
    project: str = "symtrain"
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    wandb: bool = True
    quiet: bool = False
    test_after_fit: bool = True


@dataclass(frozen=True)
class RunIdentity:
    """What a run is: the names dashboards group it by (flat keys in wandb and ``summary.json``),
    its default name, and which earlier runs ``--ckpt_path last`` may continue.

    Args:
        backbone: the backbone's name.
        strategy: the symmetry strategy's class name.
        dataset: the data module's name.
        seed: the run's seed.
        task: ``classification`` or ``segmentation``; segmentation runs are named, and resumed,
            apart.
        approach: the label of the compared approach (default ``{backbone} + {strategy}``).

    Examples:
        >>> run = RunIdentity("StandardCNN", "NoSymmetry", "shapes", 0)
        >>> run.approach
        'StandardCNN + NoSymmetry'
        >>> run.name_prefix()
        'standardcnn-nosymmetry-shapes-s0-'
        >>> run.name_prefix("test")
        'standardcnn-nosymmetry-shapes-s0-test-'
        >>> RunIdentity("StandardCNN", "NoSymmetry", "shapes", 0, "segmentation").default_name()[:37]
        'standardcnn-nosymmetry-shapes-seg-s0-'
    """

    backbone: str
    strategy: str
    dataset: str
    seed: int | None
    task: str = "classification"
    approach: str | None = None

    def __post_init__(self) -> None:
        if self.approach is None:
            object.__setattr__(self, "approach", f"{self.backbone} + {self.strategy}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def name_prefix(self, subcommand: str = "fit") -> str:
        """What every default name of this run's backbone, strategy, data, seed and command
        starts with."""
        data = f"{self.dataset}-seg" if self.task == "segmentation" else self.dataset
        stage = "" if subcommand == "fit" else f"{subcommand}-"
        return f"{self.backbone}-{self.strategy}-{data}-s{self.seed}-{stage}".lower()

    def default_name(self, subcommand: str = "fit") -> str:
        """A readable, sortable name ending in the start time, which keeps repeated runs apart.
        In a SLURM job it ends in the job id instead, so a requeued job finds its own run again."""
        job = os.environ.get("SLURM_JOB_ID")
        if os.environ.get("SLURM_ARRAY_JOB_ID"):
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
        if job and re.fullmatch(r"[\d_]+", job):
            return f"{self.name_prefix(subcommand)}j{job}"
        return self.name_prefix(subcommand) + datetime.now().strftime("%Y%m%d-%H%M%S")


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


# Where rank 0 put this command's run directory, for the processes DDP relaunches.
_RUN_DIR_ENV = "SYMTRAIN_RUN_DIR"


@dataclass
class RunDirectory:
    """The directory one command writes into: a new one, or for a resumed fit the run it
    continues.

    Only rank 0 creates it (Lightning broadcasts its checkpoint paths); the other processes
    create nothing and point at the directory rank 0 made, through the environment that the
    processes DDP relaunches inherit.

    Attributes:
        path: the run directory.
        resumed: whether this command continues a run found on disk.
        config_before: a resumed run's ``config.yaml`` as it was, put back if the resuming
            command (whose config replaces it: it may extend ``max_epochs``) fails on a mistake.
    """

    path: Path
    resumed: bool = False
    config_before: str | None = None

    @classmethod
    def open(cls, root: Path, name: str, resume: Path | None = None) -> RunDirectory:
        """The run ``resume`` when given, else a new directory ``root/name`` (suffixed if taken)."""
        if resume is not None:
            config = resume / "config.yaml"
            run = cls(resume, True, config.read_text() if config.is_file() else None)
        elif rank_zero_only.rank == 0:
            run = cls(create_run_dir(root, name))
        else:
            run = cls(Path(os.environ.get(_RUN_DIR_ENV) or root / name))
        if rank_zero_only.rank == 0:
            os.environ[_RUN_DIR_ENV] = str(run.path)
        return run

    def abandon(self) -> None:
        """After a user mistake: a new run with no checkpoint yet holds nothing worth keeping and
        would look valid, so it goes; a resumed run gets its first config back."""
        if self.resumed:
            if self.config_before is not None:
                write_atomically(self.path / "config.yaml", self.config_before)
            return
        checkpoints = self.path / "checkpoints"
        if not (checkpoints.is_dir() and any(checkpoints.iterdir())):
            remove_run(self.path)


def remove_run(run_dir: Path) -> None:
    """Remove a run that failed before it produced anything valid, with its wandb files."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb_dir = Path(wandb.run.dir).parent
        wandb.finish(exit_code=1)
        shutil.rmtree(wandb_dir, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)


def to_jsonable(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in sorted(metrics.items())}


def write_atomically(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that a reader never sees half a file."""
    partial = path.with_name(f"{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)
    return path


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` atomically."""
    return write_atomically(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


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


# A default run name ends in its start time (or, on SLURM, its job id); see RunIdentity.default_name.
_STAMP = re.compile(r"(\d{8}-\d{6}|j[\d_]+)(-\d+)?")


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a resumed run continues from: the newer of ``checkpoints/last.ckpt`` and
    the ``hpc_ckpt_*.ckpt`` that Lightning writes on a SLURM requeue signal."""
    candidates = [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
    existing = [path for path in candidates if path.is_file()]
    return max(existing, key=lambda path: path.stat().st_mtime_ns) if existing else None


def find_resumable_run(root: Path, name: str | None, prefix: str) -> Path | None:
    """The run directory ``--ckpt_path last`` continues, or None when there is none.

    Args:
        root: the directory holding the runs (``--trainer.default_root_dir``).
        name: ``--run.name`` when given: exactly that run.
        prefix: otherwise the newest run whose name is ``prefix`` plus a time stamp (or SLURM
            job id), i.e. the newest run of the same backbone, strategy, data and seed.

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for run in ("cnn-none-shapes-s0-20260101-120000", "cnn-none-shapes-s0-20260102-090000"):
        ...     (root / run / "checkpoints").mkdir(parents=True)
        ...     (root / run / "checkpoints" / "last.ckpt").touch()
        >>> find_resumable_run(root, None, "cnn-none-shapes-s0-").name
        'cnn-none-shapes-s0-20260102-090000'
        >>> find_resumable_run(root, None, "cnn-none-shapes-s1-") is None
        True
    """
    if name is not None:
        candidates = [root / name]
    elif root.is_dir():
        candidates = [
            path
            for path in root.iterdir()
            if path.name.startswith(prefix) and _STAMP.fullmatch(path.name[len(prefix) :])
        ]
    else:
        candidates = []
    saved = {path: newest_checkpoint(path) for path in candidates if path.is_dir()}
    # The most recently saved; names (which end in the start time) break ties.
    resumable = [
        (checkpoint.stat().st_mtime_ns, path.name, path) for path, checkpoint in saved.items() if checkpoint
    ]
    return max(resumable)[2] if resumable else None


def run_of_checkpoint(path: Path) -> Path | None:
    """The run directory a checkpoint file belongs to, if it sits in one."""
    for run_dir in (path.parent.parent, path.parent):
        if (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints").is_dir():
            return run_dir
    return None


@dataclass(frozen=True)
class Resolved:
    """Where ``--ckpt_path`` leads.

    Attributes:
        checkpoint: the checkpoint file to load, or None to start a new run.
        run_dir: the run directory the checkpoint belongs to, if any.
        note: why nothing is resumed, when a fit starts anew (one line for the user).
    """

    checkpoint: Path | None
    run_dir: Path | None
    note: str | None = None


def resolve_checkpoint(
    ckpt_path: str | None, subcommand: str, root: Path, name: str | None, prefix: str
) -> Resolved | None:
    """Turn ``--ckpt_path`` into a checkpoint file: ``last`` and ``best`` mean the run ``name``
    (for fit, ``--run.name``), else the newest run under ``root`` whose name starts with
    ``prefix`` (the same backbone, strategy, data and seed); a run directory means its newest
    checkpoint for fit (to continue it), its best one otherwise; a file means itself. A requeued
    SLURM job's fit resumes as if given ``last``.

    Returns:
        None when there is nothing to resolve (no ``--ckpt_path``, or Lightning's own ``hpc``
        and ``registry``).

    Raises:
        SymtrainError: for test, validate or predict, when no run matches (fit starts anew,
            with a ``note``), or when the path holds no checkpoint.
    """
    if ckpt_path is None and subcommand == "fit" and int(os.environ.get("SLURM_RESTART_COUNT", 0)):
        ckpt_path = "last"
    if ckpt_path is None or ckpt_path in ("hpc", "registry"):
        return None
    if ckpt_path in ("last", "best"):
        run_dir = find_resumable_run(root, name, prefix)
        if run_dir is None:
            looked_for = f"'{name}'" if name else f"'{prefix}*' with a checkpoint"
            if subcommand != "fit":
                raise SymtrainError(f"no run {looked_for} under '{root}': pass --ckpt_path FILE")
            return Resolved(
                None, None, f"symtrain: no run {looked_for} under '{root}' to resume: starting a new run\n"
            )
        checkpoint = newest_checkpoint(run_dir) if ckpt_path == "last" else find_checkpoint(run_dir)
        return Resolved(checkpoint, run_dir)
    path = Path(ckpt_path)
    checkpoint = find_checkpoint(path)
    if path.is_dir() and subcommand == "fit":
        checkpoint = newest_checkpoint(path) or checkpoint
    return Resolved(checkpoint, run_of_checkpoint(checkpoint))


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", export: bool = False
) -> nn.Module:
    """Load a trained network from a checkpoint or a run directory.

    Args:
        path: a ``.ckpt`` file, or a run directory (its best checkpoint is used).
        map_location: device to load the weights onto.
        export: replace a backbone that can export itself (escnn models; for segmentation,
            its encoder and decoder) by its plain-torch equivalent: same outputs, no escnn at
            inference.

    Returns:
        The network in eval mode: a plain ``nn.Module`` mapping a float image batch in
        [0, 1], shape (B, C, H, W), to logits (B, num_classes), or for a segmentation run to
        per-pixel logits (B, num_classes + 1, H, W) with class 0 the background.
        Normalisation is inside.

    Example::

        net = symtrain.load_model("runs/standardcnn-nosymmetry-shapes-s0-20260101-120000")
        logits = net(images)  # images: floats in [0, 1]
    """
    net = load_module(path, map_location).net.eval()
    return net.export() if export else net


def load_module(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """The trained :class:`~symtrain.module.SymmetryModule` of a checkpoint or a run directory
    (its best checkpoint): the network with its task and recipe (what ``measure`` reads).

    Raises:
        SymtrainError: for a missing or unreadable checkpoint, in one line naming it.
    """
    from symtrain.checkpoints import read_checkpoint
    from symtrain.module import SymmetryModule

    checkpoint = find_checkpoint(path)
    read_checkpoint(checkpoint)  # a bad file ends in one line naming it, not deep in Lightning
    return SymmetryModule.load_from_checkpoint(checkpoint, map_location=map_location, weights_only=True)
