"""Keeping a run's work when the process is stopped, killed or its training diverges.

- :class:`RandomState` puts the random generators' states into every checkpoint, so a resumed
  run draws the same shuffles and augmentations as one that was never interrupted.
- :class:`Preemption` turns SIGTERM (and SIGUSR1 off SLURM) into a checkpoint at the next step
  boundary and a clean exit; on SLURM, Lightning's environment plugin handles SIGUSR1 itself
  (it saves an ``hpc_ckpt_*.ckpt`` and requeues the job).
- :class:`NonFiniteLossStop` stops training when the loss stops being finite, before a
  checkpoint with broken weights can replace the last good one.

Which run ``--ckpt_path last`` continues is the runs layer's (:mod:`symtrain.runs`).

Lightning provides none of these as used here: it saves no RNG state, its SIGTERM handling
exits without saving, and its ``detect_anomaly`` syncs and slows every step.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from symtrain.errors import SymtrainError


class RandomState(Callback):
    """Saves the random generators' states (torch, CUDA, numpy, Python) in every checkpoint and
    restores them on resume.

    The checkpoint that ``last`` points to is written at the end of an epoch; restoring the
    generators there makes the next epoch's shuffle and augmentations the ones an uninterrupted
    run draws, so a killed and resumed run on the CPU ends with the same weights.
    """

    def state_dict(self) -> dict[str, Any]:
        numpy_kind, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            # Plain tensors and numbers: checkpoints load with weights_only=True.
            "numpy": [
                numpy_kind,
                torch.from_numpy(numpy_keys.astype(np.int64)),
                numpy_pos,
                numpy_has_gauss,
                numpy_gauss,
            ],
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))


class Preemption(Callback):
    """On SIGTERM or SIGUSR1: finish the current step, save ``checkpoint`` and stop.

    SIGTERM is what schedulers and ``kill`` send; SIGUSR1 is the usual advance warning of a
    cluster's time limit. Lightning notices SIGTERM (and tells DDP's other processes) and ends
    the fit with ``SIGTERMException`` at the next step boundary; SIGUSR1 is turned into
    SIGTERM to take the same path. On SLURM with auto-requeue, Lightning owns SIGUSR1: it saves
    ``hpc_ckpt_N.ckpt`` in the run directory and requeues the job, which then resumes.

    Args:
        checkpoint: where to save (the run's ``checkpoints/last.ckpt``).
    """

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.received: str | None = None
        self._active = False
        self._previous: Any = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if environment is None and SLURMEnvironment.detect():
            environment = SLURMEnvironment()  # what Lightning uses there unless told otherwise
        lightning_owns_sigusr1 = getattr(environment, "auto_requeue", False)
        if stage != "fit" or lightning_owns_sigusr1 or not _is_main_thread():
            return
        self._active = True
        self._previous = signal.signal(signal.SIGUSR1, self._forward_as_sigterm)

    def _forward_as_sigterm(self, number: int, frame: Any) -> None:
        if self._active:
            self.received = signal.Signals(number).name
            os.kill(os.getpid(), signal.SIGTERM)
        elif callable(self._previous):
            self._previous(number, frame)
        else:  # a handler left behind after the fit (Lightning restores it): act as before it
            signal.signal(number, self._previous if self._previous is not None else signal.SIG_DFL)
            os.kill(os.getpid(), number)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.received = self.received or "SIGTERM"
            trainer.save_checkpoint(self.checkpoint)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._active and _is_main_thread():
            signal.signal(signal.SIGUSR1, self._previous if self._previous is not None else signal.SIG_DFL)
        self._active = False


def _is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class NonFiniteLossStop(Callback):
    """Stop training when the loss is NaN or infinite, naming the step it happened at.

    The check stays on the device at every step (no host sync in the hot path) and is read on
    the host every ``check_every`` steps and before every checkpoint, so no checkpoint holding
    the broken weights is ever written: the last good ``last.ckpt`` stays in place.

    Args:
        checkpoint: the run's ``last.ckpt``, named in the message.
        check_every: steps between host reads of the check.
    """

    def __init__(self, checkpoint: Path, check_every: int = 10) -> None:
        self.checkpoint = Path(checkpoint)
        self.check_every = check_every
        self._first_bad_step: torch.Tensor | None = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        step = trainer.global_step - 1  # global_step already counts this step's optimizer update
        if self._first_bad_step is None:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        newly_bad = (~torch.isfinite(loss.detach())) & (self._first_bad_step < 0)
        self._first_bad_step = torch.where(newly_bad, step, self._first_bad_step)
        if trainer.global_step % self.check_every == 0:
            self._check(trainer)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        if self._first_bad_step is None:
            return
        # Every process must agree to stop, or DDP's others would wait for it forever.
        step = int(trainer.strategy.reduce(self._first_bad_step.float(), reduce_op="max"))
        if step < 0:
            return
        kept = (
            f"the last good checkpoint is kept: {self.checkpoint}"
            if self.checkpoint.is_file()
            else "no checkpoint had been written yet"
        )
        raise SymtrainError(
            f"the training loss is not finite (NaN or inf) at step {step} (epoch {trainer.current_epoch}): "
            f"training stopped and {kept}; lower --model.lr or check the data"
        )


def exit_code_for(signal_name: str | None) -> int:
    """The shell's code for a process ended by that signal (143 for SIGTERM), so scripts and
    schedulers see an interrupted run rather than a finished one.

    Examples:
        >>> exit_code_for("SIGTERM"), exit_code_for("SIGUSR1")
        (143, 138)
    """
    return 128 + int(getattr(signal, signal_name or "SIGTERM"))
