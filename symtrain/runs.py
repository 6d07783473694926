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
import socket
import sys
import threading
import urllib.parse
import urllib.request
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


def run_name_prefix(
    backbone: str, strategy: str, dataset: str, seed: int | None, subcommand: str = "fit"
) -> str:
    """What every default run name of this backbone, strategy, data, seed and command starts with.

    Examples:
        >>> run_name_prefix("StandardCNN", "NoSymmetry", "shapes", 0)
        'standardcnn-nosymmetry-shapes-s0-'
        >>> run_name_prefix("StandardCNN", "NoSymmetry", "shapes", 0, "test")
        'standardcnn-nosymmetry-shapes-s0-test-'
    """
    stage = "" if subcommand == "fit" else f"{subcommand}-"
    return f"{backbone}-{strategy}-{dataset}-s{seed}-{stage}".lower()


def default_run_name(
    backbone: str, strategy: str, dataset: str, seed: int | None, subcommand: str = "fit"
) -> str:
    """A readable, sortable name ending in the start time, which keeps repeated runs apart. In a
    SLURM job it ends in the job id instead, so a requeued job finds its own run again.

    Examples:
        >>> default_run_name("StandardCNN", "NoSymmetry", "shapes", 0)[:33]
        'standardcnn-nosymmetry-shapes-s0-'
        >>> default_run_name("StandardCNN", "NoSymmetry", "shapes", 0, "test")[:38]
        'standardcnn-nosymmetry-shapes-s0-test-'
    """
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    stamp = f"j{job}" if job and re.fullmatch(r"[\d_]+", job) else datetime.now().strftime("%Y%m%d-%H%M%S")
    return run_name_prefix(backbone, strategy, dataset, seed, subcommand) + stamp


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


def wandb_mode(sync_dir: str | None = None) -> str:
    """The wandb mode for a run: online only when wandb can log in and reach its server.

    ``WANDB_MODE`` wins when set, except that an online mode falls back to offline, with one line
    on stderr, when there are no credentials (wandb would stop and prompt for them) or the server
    does not answer within a few seconds (wandb would retry for minutes before failing the run).
    Without ``WANDB_MODE``, a run is online only for a logged-in user, so nothing ever prompts.

    Args:
        sync_dir: the directory holding the runs' ``wandb/`` folder, for the message on how to
            upload an offline run later (default: ``runs``).

    Returns:
        ``WANDB_MODE`` as set, ``"online"`` or ``"offline"``.
    """
    requested = os.environ.get("WANDB_MODE", "").strip()
    # "offline", "dryrun" and "disabled" never touch the network: nothing to check.
    if requested and requested not in ("online", "run", "shared"):
        return requested
    base_url = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    url = urllib.parse.urlsplit(base_url if "://" in base_url else f"https://{base_url}")
    host = url.hostname or "api.wandb.ai"
    upload_later = f"upload later with: wandb sync {Path(sync_dir or 'runs') / 'wandb'}/offline-run-*"
    if not _has_wandb_credentials(url.netloc or host):
        if requested:
            _tell(
                f"WANDB_MODE={requested} but no credentials for {url.netloc or host}: logging offline; "
                f"log in with `wandb login` (or set WANDB_API_KEY), {upload_later}"
            )
        return "offline"
    target = f"{host}:{_port(url)}"
    # wandb goes through the proxy the environment names, so that is what has to answer.
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        reason = _cannot_connect(proxy_url.hostname or "", _port(proxy_url))
        target += f" through proxy {proxy_url.hostname}:{_port(proxy_url)}"
    else:
        reason = _cannot_connect(host, _port(url))
    if reason is not None:
        _tell(f"cannot reach {target} ({reason}): logging offline; {upload_later}")
        return "offline"
    return requested or "online"


def _has_wandb_credentials(netloc: str) -> bool:
    """Whether wandb finds an API key for the server at ``netloc`` without prompting for one."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    # Where wandb looks: the file NETRC names, else ~/.netrc (what `wandb login` writes).
    path = os.environ.get("NETRC")
    try:
        entries = netrc.netrc(os.path.expanduser(path) if path else None)
    except (OSError, netrc.NetrcParseError):
        return False
    return entries.authenticators(netloc) is not None


def _port(url: urllib.parse.SplitResult) -> int:
    """The URL's port: the explicit one, else the scheme's default."""
    try:
        port = url.port
    except ValueError:  # not a number: wandb will refuse the URL itself, with its own message
        port = None
    return port or (80 if url.scheme == "http" else 443)


def _cannot_connect(host: str, port: int, timeout: float = 3.0) -> str | None:
    """Why a TCP connection to ``host:port`` does not open within ``timeout`` seconds; None if it does."""
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        # UnicodeError: a host name that cannot be encoded (an empty or over-long label).
        except (OSError, UnicodeError, ValueError) as error:
            outcome.append(getattr(error, "strerror", None) or str(error) or type(error).__name__)

    # In a thread, to bound the whole attempt: the name lookup has no timeout of its own and can
    # stall for many seconds when a resolver is configured but unreachable.
    worker = threading.Thread(target=connect, name="symtrain-wandb-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else "timed out"


def _tell(message: str) -> None:
    """One line on stderr, from the first process only: every DDP process builds the loggers."""
    for variable in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if variable in os.environ:
            if os.environ[variable] != "0":
                return
            break
    sys.stderr.write(f"symtrain: wandb: {message}\n")


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
    from symtrain.checkpoints import read_checkpoint
    from symtrain.module import SymmetryModule

    checkpoint = find_checkpoint(path)
    read_checkpoint(checkpoint)  # a bad file ends in one line naming it, not deep in Lightning
    module = SymmetryModule.load_from_checkpoint(checkpoint, map_location=map_location, weights_only=True)
    net = module.net.eval()
    return net.export() if export else net
