"""What a run leaves besides its checkpoints: its loggers (CSV in the run directory, wandb),
``summary.json`` (names, parameters, times, metrics, curves, the measures' definitions),
``predictions.pt``, and the curves as wandb line plots."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from symtrain.clock import seconds_since_start
from symtrain.metrics import EquivarianceMetrics
from symtrain.runs import RunOptions, to_jsonable, wandb_mode, write_summary
from symtrain.timings import Timings


class FlatKeysWandbLogger(WandbLogger):
    """Nests the model's hyperparameters under ``hparams`` so its ``backbone`` entry cannot
    overwrite the flat ``backbone`` key that dashboards group runs by."""

    def log_hyperparams(self, params: Any) -> None:
        super().log_hyperparams({"hparams": dict(params)})


def run_loggers(
    run_dir: Path, options: RunOptions, names: dict[str, Any], params: int, data: dict[str, Any]
) -> list[Logger]:
    """The run's loggers: CSV in the run directory, and wandb (offline unless logged in) with
    the flat keys dashboards group runs by."""
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
                tags=[names["backbone"], names["strategy"], names["dataset"], *options.tags],
                config={
                    **names,
                    "params": params,
                    "run_dir": str(run_dir),
                    "data": data,
                },
                mode=wandb_mode(str(run_dir.parent)),
                settings=wandb.Settings(silent=options.quiet, console="off"),
            )
        )
    return loggers


class RunArtefacts:
    """Writes a run's artefacts when a command ends (rank 0 only), then closes its loggers.

    Args:
        run_dir: the run's directory.
        timings: the callback that clocks the run's loops (``summary.json``'s ``seconds``).
    """

    def __init__(self, run_dir: Path, timings: Timings) -> None:
        self.run_dir = run_dir
        self.timings = timings
        self.names: dict[str, Any] = {}  # backbone, strategy, dataset, seed, task, approach
        self.fit_seconds: float | None = None  # the fit's wall time, once it has ended

    def write(self, trainer: pl.Trainer, module: pl.LightningModule, metrics: dict[str, Any]) -> None:
        """``summary.json`` and the wandb curves, then every logger finalised."""
        if trainer.is_global_zero:
            write_summary(self.run_dir, self.summary(trainer, module, metrics))
            if "wandb" in sys.modules:
                self._log_curves_to_wandb(trainer)
        for logger in trainer.loggers:
            logger.finalize("success")
        if sys.modules.get("wandb") is not None and sys.modules["wandb"].run is not None:
            sys.modules["wandb"].finish()

    def save_predictions(self, trainer: pl.Trainer) -> None:
        """``predictions.pt``: the predict loop's outputs, concatenated."""
        batches = trainer.predict_loop.predictions
        if trainer.is_global_zero and batches:
            predictions = {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}
            torch.save(predictions, self.run_dir / "predictions.pt")

    def summary(self, trainer: pl.Trainer, module: pl.LightningModule, metrics: dict) -> dict[str, Any]:
        # Read from disk, not from the checkpoint callback: testing the best checkpoint restores
        # the callback's state as it was when that checkpoint was written.
        checkpoints = {
            name: f"checkpoints/{name}.ckpt"
            if (self.run_dir / "checkpoints" / f"{name}.ckpt").is_file()
            else None
            for name in ("best", "last")
        }
        return {
            "run_name": self.run_dir.name,
            **self.names,
            "params": module.num_params,
            "fit_seconds": self.fit_seconds,
            "seconds": self._seconds(trainer),
            "metrics": to_jsonable(metrics),
            "curves": self._curves(trainer),
            "measures": self._measures(trainer, module),
            "families": self._families(trainer),
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
        seconds["measure"] = sum(measured.values())
        if (elapsed := seconds_since_start()) is not None:
            seconds["elapsed"] = elapsed
        return {part: round(value, 3) for part, value in seconds.items()}

    def _log_curves_to_wandb(self, trainer: pl.Trainer) -> None:
        """Accuracy against rotation angle and shift as wandb tables with line plots."""
        import wandb

        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            for name, curve in self._curves(trainer).items():
                axis, score = curve  # e.g. angle and acc (classification) or miou (segmentation)
                table = wandb.Table(
                    columns=[axis, score], data=[list(p) for p in zip(curve[axis], curve[score], strict=True)]
                )
                plot = wandb.plot.line(table, axis, score, title=f"{name}: {score} vs {axis}")
                logger.experiment.log({f"{name}/{score}_curve": plot})
