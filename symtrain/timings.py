"""Where a run's wall time goes: start-up, training, evaluation, and everything around them.

:class:`Timings` adds up, from Lightning's hooks, the seconds spent starting up (from
:func:`symtrain.clock.note_process_start` to the trainer's setup), in training epochs, and in
validation and test loops. The CLI writes the breakdown into ``summary.json`` under
``seconds``, with the equivariance measurements split out, so every run says what it cost
beyond training.

On a GPU the hooks run ahead of the device (no synchronisation is added for timing), so there
the split between parts is approximate; totals are exact.
"""

from __future__ import annotations

import time
from collections import defaultdict

from lightning.pytorch import Callback, LightningModule, Trainer

from symtrain.clock import seconds_since_start


class Timings(Callback):
    """Adds up the wall-clock seconds of start-up, training epochs, validation and test loops.

    ``seconds`` holds ``startup`` (from the command's start to the trainer's setup: imports,
    parsing, building model and data), ``train`` (the training epochs without the validation
    inside them: fetching, augmenting, forward, backward, optimiser, the epoch's checkpoint),
    ``sanity``, ``validate`` and ``test`` (whole loops, measurements inside them included).

    Examples:
        >>> timings = Timings()
        >>> timings.seconds["train"]
        0.0
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._started: dict[str, float] = {}
        self._validated_before = 0.0

    def _start(self, part: str) -> None:
        self._started[part] = time.perf_counter()

    def _stop(self, part: str) -> None:
        if part in self._started:
            self.seconds[part] += time.perf_counter() - self._started.pop(part)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if "startup" not in self.seconds and (since := seconds_since_start()) is not None:
            self.seconds["startup"] = since

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("train")
        self._validated_before = self.seconds["validate"]

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop("train")
        # Lightning validates inside the training epoch: that time is validation's.
        self.seconds["train"] -= self.seconds["validate"] - self._validated_before

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("sanity" if trainer.sanity_checking else "validate")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop("sanity" if trainer.sanity_checking else "validate")

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("test")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop("test")
