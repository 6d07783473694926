"""What a run leaves besides its checkpoints and loggers: ``summary.json`` (names, parameters,
times, metrics, curves, the measures' definitions), ``predictions.pt``, and the curves as wandb
line plots, written by a callback when each command ends."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import Logger, WandbLogger

from symtrain.clock import seconds_since_start
from symtrain.metrics import EquivarianceMetrics
from symtrain.runs import RunIdentity, to_jsonable, write_summary
from symtrain.timings import Timings


class RunArtefacts(pl.Callback):
    """Writes a run's artefacts (rank 0 only) when each of its commands ends.

    ``summary.json`` is rewritten at the end of every trainer command with the metrics of all
    commands so far, so a fit followed by a test of its best checkpoint leaves one summary with
    both; a command that fails leaves the summary of the last one that ended.

    Args:
        run_dir: the run's directory.
        identity: the run's names (flat keys of ``summary.json``).
        timings: the callback that clocks the run's loops (``summary.json``'s ``seconds``).
        test_follows_fit: the command tests the fitted model next; the summary waits for it, so
            a run with a summary is one whose command finished.
        recipe: what the model trains with (``SymmetryModule.recipe``, as wandb's config has it);
            by default the module's own, without weight averaging.
    """

    def __init__(
        self,
        run_dir: Path,
        identity: RunIdentity,
        timings: Timings,
        test_follows_fit: bool = False,
        recipe: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.recipe = recipe
        self.test_follows_fit = test_follows_fit
        self.identity = identity
        self.timings = timings
        self.metrics: dict[str, Any] = {}
        self.fit_seconds: float | None = None  # the fit's wall time, once it has ended
        self._fit_started: float | None = None
        self._curves_logged: set[str] = set()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._fit_started = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fit_started is not None:
            self.fit_seconds = time.perf_counter() - self._fit_started

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``predictions.pt``: the predict loop's outputs, concatenated."""
        batches = trainer.predict_loop.predictions
        if trainer.is_global_zero and batches:
            predictions = {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}
            torch.save(predictions, self.run_dir / "predictions.pt")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """``summary.json`` and the new wandb curves (Lightning then finalises the loggers)."""
        if stage != "predict":
            self.metrics.update(trainer.callback_metrics)
        if stage == "fit" and self.test_follows_fit and not trainer.interrupted:
            return
        if trainer.is_global_zero:
            write_summary(self.run_dir, self.summary(trainer, pl_module, self.metrics))
            if "wandb" in sys.modules:
                self._log_curves_to_wandb(trainer)

    def summary(self, trainer: pl.Trainer, module: pl.LightningModule, metrics: dict) -> dict[str, Any]:
        # Read from disk, not from the checkpoint callback: testing the best checkpoint restores
        # the callback's state as it was when that checkpoint was written.
        checkpoints = {
            name: f"checkpoints/{name}.ckpt"
            if (self.run_dir / "checkpoints" / f"{name}.ckpt").is_file()
            else None
            for name in ("best", "last")
        }
        data = trainer.datamodule.describe() if hasattr(trainer.datamodule, "describe") else {}
        return {
            "run_name": self.run_dir.name,
            **self.identity.as_dict(),
            # What training images went through besides the strategy (flips are a symmetry).
            "base_pipeline": data.get("base_pipeline", "none"),
            "params": module.num_params,
            # The optimizer, schedule and weight averaging (the report's recipe column).
            "recipe": self.recipe if self.recipe is not None else _recipe_of(module),
            "fit_seconds": self.fit_seconds,
            "seconds": self._seconds(trainer),
            "metrics": to_jsonable(metrics),
            "curves": self._curves(trainer),
            "measures": self._measures(trainer, module),
            "families": self._families(trainer),
            "data": data,
            "checkpoints": checkpoints,
        }

    @staticmethod
    def _metrics_callback(trainer: pl.Trainer) -> EquivarianceMetrics | None:
        callbacks = [c for c in trainer.callbacks if isinstance(c, EquivarianceMetrics)]
        return callbacks[0] if callbacks else None

    def _measures(self, trainer: pl.Trainer, module: pl.LightningModule) -> list[dict[str, Any]]:
        """What each measure is (title, definition, caption): the report reads them from here."""
        metrics = self._metrics_callback(trainer)
        task = "segmentation" if getattr(module, "segmentation", False) else "classification"
        return metrics.describe(task) if metrics else []

    def _families(self, trainer: pl.Trainer) -> list[str]:
        """The measured families' names, in the order the config lists them (the report's)."""
        metrics = self._metrics_callback(trainer)
        return [family.name for family in metrics.families] if metrics else []

    def _curves(self, trainer: pl.Trainer) -> dict[str, dict[str, list[float]]]:
        metrics = self._metrics_callback(trainer)
        return metrics.curves if metrics else {}

    def _seconds(self, trainer: pl.Trainer) -> dict[str, float]:
        """Where this process's time went so far: start-up, training, validation and test loops
        (without the equivariance measurements inside them), and the measurements."""
        seconds = dict(self.timings.seconds)
        metrics = self._metrics_callback(trainer)
        measured = dict(metrics.seconds) if metrics else {}
        for loop, stage in (("validate", "val"), ("test", "test")):
            if loop in seconds:
                seconds[loop] -= measured.get(stage, 0.0)
        for stage in ("val", "test"):  # the fit's trend, and the reported values
            seconds[f"measure_{stage}"] = measured.get(stage, 0.0)
        if (elapsed := seconds_since_start()) is not None:
            seconds["elapsed"] = elapsed
        return {part: round(value, 3) for part, value in seconds.items()}

    def _log_curves_to_wandb(self, trainer: pl.Trainer) -> None:
        curves = self._curves(trainer)
        new = {name: curves[name] for name in curves if name not in self._curves_logged}
        self._curves_logged.update(new)
        log_curves(trainer.loggers, new)


def _recipe_of(module: pl.LightningModule) -> dict[str, Any] | None:
    return module.recipe() if hasattr(module, "recipe") else None


def log_curves(loggers: list[Logger], curves: dict[str, dict[str, list[float]]]) -> None:
    """Scores against rotation angle and shift (``summary.json``'s curves) as wandb tables with
    line plots, in each wandb logger among ``loggers``."""
    wandb_loggers = [logger for logger in loggers if isinstance(logger, WandbLogger)]
    if not wandb_loggers or not curves:
        return
    import wandb

    for logger in wandb_loggers:
        for name, curve in curves.items():
            axis, score = curve  # e.g. angle and acc (classification) or miou (segmentation)
            table = wandb.Table(
                columns=[axis, score], data=[list(p) for p in zip(curve[axis], curve[score], strict=True)]
            )
            plot = wandb.plot.line(table, axis, score, title=f"{name}: {score} vs {axis}")
            logger.experiment.log({f"{name}/{score}_curve": plot})
