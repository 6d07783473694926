"""``python -m symtrain {fit,validate,test,predict} --config FILE [--config FILE ...]``.

LightningCLI is the whole config system: later ``--config`` files and flags override earlier
ones, plugins are chosen by (short) class name, and the saved ``config.yaml`` rebuilds a run.
This module adds what a study needs on top: one run directory per run, wandb that works
offline, a ``summary.json``, test-after-fit, and one-line errors for user mistakes.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

import symtrain.data  # noqa: F401  (makes the data modules' short names resolvable)
from symtrain.artefacts import RunArtefacts, run_loggers
from symtrain.checkpoints import AtomicCheckpointIO, check_checkpoint_fits, read_checkpoint
from symtrain.data import ImageDataModule
from symtrain.errors import SymtrainError, one_line_error
from symtrain.metrics import EquivarianceMetrics
from symtrain.module import SymmetryModule
from symtrain.recovery import (
    NonFiniteLossStop,
    Preemption,
    RandomState,
    exit_code_for,
    resolve_checkpoint,
)
from symtrain.runs import (
    RunOptions,
    create_run_dir,
    default_run_name,
    remove_run,
    run_name_prefix,
    write_atomically,
)
from symtrain.timings import Timings

# Expected by design, so not worth a user's attention: the model (not the data) moves batches
# to floats and augments them on the device, and in-memory tensors need no loader workers.
warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer`.*")
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
# The seed is saved in every run's config.yaml and summary.json; no need to announce it.
logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)

_RUN_DIR_ENV = "SYMTRAIN_RUN_DIR"


# The last segment of a config key whose value is a plugin, and the base class of its choices.
class SymtrainArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, reporting mistakes as one line and exit code 2."""

    def error(self, message: str, ex: Exception | None = None) -> None:  # type: ignore[override]
        if not getattr(self, "exit_on_error", True):
            super().error(message, ex)
        sys.stderr.write(f"symtrain: error: {one_line_error(message)} (see --help)\n")
        sys.exit(2)


class SymtrainCLI(LightningCLI):
    """LightningCLI for :class:`SymmetryModule` and any :class:`ImageDataModule`."""

    def __init__(self, args: Any = None, run: bool = True) -> None:
        self.run_dir: Path | None = None
        super().__init__(
            SymmetryModule,
            ImageDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            parser_class=SymtrainArgumentParser,
            trainer_defaults={"default_root_dir": "runs", "max_epochs": 10, "log_every_n_steps": 10},
            args=args,
            run=run,
            auto_configure_optimizers=True,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in ("num_classes", "in_channels", "mean", "std"):
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
        parser.add_class_arguments(RunOptions, "run")
        parser.add_lightning_class_args(EquivarianceMetrics, "metrics")

    @property
    def run_options(self) -> RunOptions:
        return RunOptions(**self._get(self.config, "run"))

    def before_instantiate_classes(self) -> None:
        if self.run_options.quiet:
            logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
            warnings.filterwarnings("ignore", module="lightning")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        if self.subcommand is None:
            return super().instantiate_trainer(**kwargs)
        # Only here do model and data meet: a backbone's exact claims may depend on the image size.
        self.model.symmetry.check(self.model.net.backbone, self.datamodule.image_size)
        if self.model.segmentation:
            if not self.datamodule.has_masks:
                raise SymtrainError(
                    f"{type(self.datamodule).__name__} has no masks to segment: use SyntheticShapes "
                    "or ImageFolder with --data.init_args.masks_root DIR, "
                    "or drop configs/task/segmentation.yaml"
                )
            self.datamodule.with_masks = True
        trainer_config = self._get(self.config_init, "trainer", default={})
        options = self.run_options
        names = self._component_names()
        root = Path(trainer_config["default_root_dir"])
        resumed = self._resolve_ckpt_path(root, options, names)
        run_name = options.name or default_run_name(
            names["backbone"], names["strategy"], self._run_dataset(names), names["seed"], self.subcommand
        )
        if resumed is not None:
            self.run_dir = resumed
            # The resuming command's config replaces the first one (it may extend max_epochs);
            # if the resume fails on a user mistake, the first one is put back.
            self.save_config_kwargs["overwrite"] = True
            config = resumed / "config.yaml"
            self._config_before_resume = config.read_text() if config.is_file() else None
        elif rank_zero_only.rank == 0:
            self.run_dir = create_run_dir(root, run_name)
        else:
            # Only rank 0 writes (Lightning broadcasts its checkpoint paths); the other processes
            # create nothing and point at the directory rank 0 made, when they can know it.
            self.run_dir = Path(os.environ.get(_RUN_DIR_ENV) or root / run_name)
        if rank_zero_only.rank == 0:
            os.environ[_RUN_DIR_ENV] = str(self.run_dir)  # inherited by the processes DDP relaunches
        # Lightning keeps SLURM's requeue checkpoints (hpc_ckpt_N.ckpt) in default_root_dir.
        kwargs["default_root_dir"] = str(self.run_dir)
        if trainer_config.get("logger") in (None, True):
            data = self._get(self.config, "data").as_dict()
            kwargs["logger"] = run_loggers(self.run_dir, options, names, self.model.num_params, data)
        checkpoints = self.run_dir / "checkpoints"
        # best: lowest val/loss (accuracy ties early, at 1.0, and would keep an undertrained
        # model). last: every epoch, in its own callback, because Lightning's save_last only
        # writes when a best checkpoint was written in the same step.
        best = ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val/loss", mode="min")
        last = ModelCheckpoint(dirpath=checkpoints, filename="last", enable_version_counter=False)
        self.preemption = Preemption(checkpoints / "last.ckpt")
        recovery = [RandomState(), self.preemption, NonFiniteLossStop(checkpoints / "last.ckpt")]
        callbacks = trainer_config.get("callbacks") or []
        self.timings = Timings()
        self.artefacts = RunArtefacts(self.run_dir, self.timings)
        kwargs["callbacks"] = [*callbacks, *recovery, self.timings, best, last]
        if not any(isinstance(p, CheckpointIO) for p in trainer_config.get("plugins") or []):
            kwargs["plugins"] = [*(trainer_config.get("plugins") or []), AtomicCheckpointIO()]
        if options.quiet:
            kwargs.update(enable_progress_bar=False, enable_model_summary=False)
        try:
            return super().instantiate_trainer(**kwargs)
        except Exception:
            if resumed is None:
                remove_run(self.run_dir)
            raise

    def _resolve_ckpt_path(self, root: Path, options: RunOptions, names: dict[str, Any]) -> Path | None:
        """Turn ``--ckpt_path last`` (or a run directory, or a checkpoint inside one) into a
        checkpoint file; for ``fit``, return the run directory that the fit continues in.

        ``last`` means the run named ``--run.name``, else the newest run of the same backbone,
        strategy, data and seed under the root. A requeued SLURM job resumes as if given ``last``.
        """
        ckpt_path = self._get(self.config_init, "ckpt_path")
        if ckpt_path is None and self.subcommand == "fit" and int(os.environ.get("SLURM_RESTART_COUNT", 0)):
            ckpt_path = "last"
        if ckpt_path is None or ckpt_path in ("hpc", "registry"):
            return None
        fit_prefix = run_name_prefix(
            names["backbone"], names["strategy"], self._run_dataset(names), names["seed"]
        )
        name = options.name if self.subcommand == "fit" else None
        resolved = resolve_checkpoint(ckpt_path, self.subcommand, root, name, fit_prefix)
        if resolved.checkpoint is None:
            rank_zero_only(sys.stderr.write)(resolved.note)
            self._set_ckpt_path(None)
            return None
        checkpoint, run_dir = resolved.checkpoint, resolved.run_dir
        if str(checkpoint) != str(ckpt_path):
            # LightningCLI took the model's config from the checkpoint only if it was named as a
            # file; a resolved one may hold another model (e.g. a run of another width).
            check_checkpoint_fits(read_checkpoint(checkpoint), self.model, checkpoint)
        self._set_ckpt_path(str(checkpoint))
        return run_dir if self.subcommand == "fit" else None

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the model's config from a --ckpt_path file here; read it safely
        # first, so that a truncated or foreign file ends in one line naming it.
        ckpt_path = self.config.get("subcommand") and self.config[self.config.subcommand].get("ckpt_path")
        if ckpt_path and Path(ckpt_path).is_file():
            read_checkpoint(ckpt_path)
        super()._parse_ckpt_path()

    def _set_ckpt_path(self, value: str | None) -> None:
        self.config_init[self.subcommand]["ckpt_path"] = value

    def _component_names(self) -> dict[str, Any]:
        names = {
            "backbone": self.model.net.backbone.name,
            "strategy": type(self.model.symmetry).__name__,
            "dataset": self.datamodule.name,
            "seed": self._get(self.config, "seed_everything"),
        }
        return {
            **names,
            "task": self.model.hparams.task,
            "approach": self.run_options.approach or f"{names['backbone']} + {names['strategy']}",
        }

    @staticmethod
    def _run_dataset(names: dict[str, Any]) -> str:
        """The data part of run names: segmentation runs are named, and resumed, apart."""
        return f"{names['dataset']}-seg" if names["task"] == "segmentation" else names["dataset"]

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except SIGTERMException:
            checkpoint = self.preemption.checkpoint
            sys.stderr.write(
                f"symtrain: stopped by {self.preemption.received or 'SIGTERM'}: saved {checkpoint}; "
                f"resume with the same command and --ckpt_path {checkpoint}\n"
            )
            raise SystemExit(exit_code_for(self.preemption.received)) from None
        except Exception as error:
            if user_error(error) is None:
                raise
            # A run that fails on a user mistake before its first checkpoint holds nothing
            # worth keeping; leaving it would look like a valid run.
            checkpoints = self.run_dir / "checkpoints"
            if not (checkpoints.is_dir() and any(checkpoints.iterdir())):
                remove_run(self.run_dir)
            elif getattr(self, "_config_before_resume", None) is not None:
                write_atomically(self.run_dir / "config.yaml", self._config_before_resume)
            raise

    def before_fit(self) -> None:
        self._fit_started = time.perf_counter()

    def after_fit(self) -> None:
        self._fit_seconds = time.perf_counter() - self._fit_started
        metrics = dict(self.trainer.callback_metrics)
        if self.run_options.test_after_fit and not self.trainer.interrupted:
            best = self.trainer.checkpoint_callback.best_model_path
            self.trainer.test(
                self.model,
                datamodule=self.datamodule,
                ckpt_path=best or None,
                verbose=not self.run_options.quiet,
            )
            metrics.update(self.trainer.callback_metrics)
        self._finish(metrics)

    def after_validate(self) -> None:
        self._finish(dict(self.trainer.callback_metrics))

    def after_test(self) -> None:
        self._finish(dict(self.trainer.callback_metrics))

    def after_predict(self) -> None:
        self.artefacts.save_predictions(self.trainer)
        self._finish({})

    def _finish(self, metrics: dict[str, Any]) -> None:
        self.artefacts.names = self._component_names()
        self.artefacts.fit_seconds = getattr(self, "_fit_seconds", None)
        self.artefacts.write(self.trainer, self.model, metrics)


def user_error(error: BaseException | None) -> BaseException | None:
    """The user mistake behind ``error``, if any: jsonargparse wraps errors raised while it
    instantiates classes, so the chain of causes is searched."""
    while error is not None:
        if isinstance(error, (SymtrainError, MisconfigurationException)):
            return error
        error = error.__cause__ or error.__context__
    return None


def main(args: Any = None) -> None:
    """LightningCLI's subcommands (fit, validate, test, predict) with one-line user errors;
    ``symtrain.__main__.main`` dispatches every subcommand, ``compare`` and ``report`` too."""
    try:
        SymtrainCLI(args=args)
    except Exception as error:
        mistake = user_error(error)
        if mistake is None:
            raise
        lines = str(mistake).strip().splitlines()
        sys.stderr.write(f"symtrain: error: {lines[0] if lines else type(mistake).__name__}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
