"""Experiment tracking: a run's loggers (CSV in its directory, wandb) and the wandb mode that
never prompts or hangs (offline unless logged in and the server answers)."""

from __future__ import annotations

import netrc
import os
import socket
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from symtrain.runs import RunIdentity, RunOptions


class FlatKeysWandbLogger(WandbLogger):
    """Nests the model's hyperparameters under ``hparams`` so its ``backbone`` entry cannot
    overwrite the flat ``backbone`` key that dashboards group runs by."""

    def log_hyperparams(self, params: Any) -> None:
        super().log_hyperparams({"hparams": dict(params)})


def run_loggers(
    run_dir: Path,
    options: RunOptions,
    identity: RunIdentity,
    params: int,
    data: dict[str, Any],
    recipe: dict[str, Any] | None = None,
) -> list[Logger]:
    """The run's loggers: CSV in the run directory, and wandb (offline unless logged in) with
    the flat keys dashboards group runs by, and the training ``recipe`` (``SymmetryModule.recipe``)
    when the run trains."""
    # CSV first: Lightning takes the first logger's directory as trainer.log_dir, where
    # the config is saved, so config.yaml lands in the run directory.
    loggers: list[Logger] = [CSVLogger(save_dir=run_dir, name="", version="")]
    if options.wandb:
        import wandb  # imported here: it is slow to import and not every command logs

        loggers.append(
            FlatKeysWandbLogger(
                name=run_dir.name,
                save_dir=str(run_dir.parent),
                project=options.project,
                group=options.group,
                tags=[identity.backbone, identity.strategy, identity.dataset, *options.tags],
                # base_pipeline flat beside backbone and strategy: a strategy trained on flipped
                # images is never grouped with symmetry-free runs by mistake.
                config={
                    **identity.as_dict(),
                    "base_pipeline": data.get("base_pipeline", "none"),
                    "params": params,
                    "run_dir": str(run_dir),
                    "data": data,
                    **({"recipe": recipe} if recipe is not None else {}),
                },
                mode=wandb_mode(str(run_dir.parent)),
                settings=wandb.Settings(silent=options.quiet, console="off"),
            )
        )
    return loggers


def finish_tracking() -> None:
    """End the wandb run, if one is open, once a command is done (a fit and the test after it
    log to one wandb run)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


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
