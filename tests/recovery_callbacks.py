"""Callbacks that make a training process fail on purpose, at a chosen step, for the recovery
tests (passed with ``--trainer.callbacks+=...``; ``tests/`` is put on ``PYTHONPATH``)."""

from __future__ import annotations

import json
import os
import signal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class SignalAt(Callback):
    """Sends ``signal_name`` to its own process once training has taken ``step`` steps."""

    def __init__(self, step: int, signal_name: str = "SIGKILL") -> None:
        self.step = step
        self.signal_name = signal_name

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))


class PoisonAt(Callback):
    """Fills the first weight with NaN before training step ``step``: the loss is NaN from there."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


class StopAfter(Callback):
    """Ends training cleanly after ``epochs`` epochs, as an interruption would: its run has a
    last checkpoint and epochs left to resume."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class KillAtTest(Callback):
    """Kills its own process as the test loop starts (after a fit, before its test ends)."""

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class RecordSamples(Callback):
    """Writes which training images each step saw, one JSON line per step in
    ``directory/rank<r>.jsonl``: images whose first two pixels spell their index (high and low
    byte; tests/test_shards.py writes them) are named by it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: object, *args: object
    ) -> None:
        images = batch[0]  # floats in [0, 1], (B, 1, H, W)
        pixels = (images[:, 0, 0, :2] * 255).round().long()
        ids = (pixels[:, 0] * 256 + pixels[:, 1]).tolist()
        record = {"epoch": trainer.current_epoch, "step": trainer.global_step, "ids": ids}
        with open(os.path.join(self.directory, f"rank{trainer.global_rank}.jsonl"), "a") as file:
            file.write(json.dumps(record) + "\n")
