"""``python -m symtrain {fit,validate,test,predict} --config FILE [--config FILE ...]``.

LightningCLI is the whole config system: later ``--config`` files and flags override earlier
ones, plugins are chosen by (short) class name, and the saved ``config.yaml`` rebuilds a run.
This module adds what a study needs on top: one run directory per run, wandb that works
offline, a ``summary.json``, test-after-fit, and one-line errors for user mistakes.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, WeightAveraging
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

import symtrain.data  # noqa: F401  (makes the data modules' short names resolvable)
from symtrain.artefacts import RunArtefacts
from symtrain.checkpoints import AtomicCheckpointIO, check_checkpoint_fits, read_checkpoint
from symtrain.data import ImageDataModule
from symtrain.errors import SymtrainError, error_line, one_line_error
from symtrain.metrics import EquivarianceMetrics
from symtrain.module import SymmetryModule
from symtrain.recovery import NonFiniteLossStop, Preemption, RandomState, exit_code_for
from symtrain.runs import RunDirectory, RunIdentity, RunOptions, resolve_checkpoint
from symtrain.timings import Timings
from symtrain.tracking import finish_tracking, run_loggers

# Expected by design, so not worth a user's attention: the model (not the data) moves batches
# to floats and augments them on the device, and in-memory tensors need no loader workers.
warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer`.*")
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
# The seed is saved in every run's config.yaml and summary.json; no need to announce it.
logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)


# LightningCLI's other way to choose an optimizer or scheduler (top-level keys that replaced the
# module's configure_optimizers), switched off: the recipe is the model's, in one place.
_TOP_LEVEL_RECIPE = re.compile(r"(?:[Oo]ption '|unrecognized arguments:.*?--)(optimizer|lr_scheduler)\b")


class SymtrainArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, reporting mistakes as one line and exit code 2."""

    def error(self, message: str, ex: Exception | None = None) -> None:  # type: ignore[override]
        if not getattr(self, "exit_on_error", True):
            super().error(message, ex)
        if moved := _TOP_LEVEL_RECIPE.search(message):
            key = moved.group(1)
            message = (
                f"a top-level {key} is not a setting: give it as model.{key} (class_path and init_args, "
                "as configs/optim/ does)"
            )
        sys.stderr.write(f"symtrain: error: {one_line_error(message)} (see --help)\n")
        sys.exit(2)


class SymtrainCLI(LightningCLI):
    """LightningCLI for :class:`SymmetryModule` and any :class:`ImageDataModule`."""

    def __init__(self, args: Any = None, run: bool = True) -> None:
        self.run: RunDirectory | None = None
        super().__init__(
            SymmetryModule,
            ImageDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            parser_class=SymtrainArgumentParser,
            trainer_defaults={"default_root_dir": "runs", "max_epochs": 10, "log_every_n_steps": 10},
            args=args,
            run=run,
            auto_configure_optimizers=False,
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
        check_model_fits_data(self.model, self.datamodule)
        trainer_config = self._get(self.config_init, "trainer", default={})
        options = self.run_options
        identity = self.run_identity
        root = Path(trainer_config["default_root_dir"])
        self.run = RunDirectory.open(
            root, options.name or identity.default_name(self.subcommand), self._resolve_ckpt_path(root)
        )
        # The resuming command's config replaces the first one (it may extend max_epochs).
        self.save_config_kwargs["overwrite"] = self.run.resumed
        # Lightning keeps SLURM's requeue checkpoints (hpc_ckpt_N.ckpt) in default_root_dir.
        kwargs["default_root_dir"] = str(self.run_dir)
        # Recorded before the optimizer exists, from the model's settings and the callbacks.
        recipe = self.model.recipe(ema=self._ema_settings())
        if trainer_config.get("logger") in (None, True):
            data = self._get(self.config, "data").as_dict()
            data["base_pipeline"] = self.datamodule.pipeline.name  # what training saw, at a glance
            kwargs["logger"] = run_loggers(
                self.run_dir, options, identity, self.model.num_params, data, recipe=recipe
            )
        kwargs["callbacks"] = [
            *_as_list(trainer_config.get("callbacks")),
            *self._run_callbacks(identity, recipe),
        ]
        if not any(isinstance(p, CheckpointIO) for p in trainer_config.get("plugins") or []):
            kwargs["plugins"] = [*(trainer_config.get("plugins") or []), AtomicCheckpointIO()]
        if options.quiet:
            kwargs.update(enable_progress_bar=False, enable_model_summary=False)
        try:
            return super().instantiate_trainer(**kwargs)
        except Exception:
            self.run.abandon()
            raise

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # Weight averaging swaps the averaged weights in when validation starts and back when its
        # epoch ends: placed after the callbacks that measure the validated model (the metrics),
        # which then measure the averaged weights too, as the loss and accuracy are.
        configured = _as_list(config.get("callbacks"))
        averaging = [c for c in configured if isinstance(c, WeightAveraging)]
        config["callbacks"] = [c for c in configured if not isinstance(c, WeightAveraging)]
        return super()._instantiate_trainer(config, [*callbacks, *averaging])

    def _ema_settings(self) -> dict[str, Any] | None:
        """The configured EMAWeightAveraging callback's settings (what the recipe records), or
        None. Read from the config: the callback keeps its decay inside a closure."""
        configured = _as_list(self._get(self.config_init, "trainer", default={}).get("callbacks"))
        parsed = _as_list(self._get(self.config, "trainer", default={}).get("callbacks"))
        for callback, spec in zip(configured, parsed, strict=False):
            if isinstance(callback, EMAWeightAveraging):
                settings = dict(spec.get("init_args") or {})
                # Its own settings, not where the copy lives (device) or AveragedModel's extras.
                own = set(inspect.signature(EMAWeightAveraging).parameters) - {"device", "kwargs"}
                return {key: value for key, value in settings.items() if key in own}
        return None

    @property
    def run_dir(self) -> Path | None:
        return self.run.path if self.run is not None else None

    @property
    def run_identity(self) -> RunIdentity:
        return RunIdentity(
            backbone=self.model.net.backbone.name,
            strategy=type(self.model.symmetry).__name__,
            dataset=self.datamodule.name,
            seed=self._get(self.config, "seed_everything"),
            task=self.model.hparams.task,
            approach=self.run_options.approach,
        )

    def _run_callbacks(self, identity: RunIdentity, recipe: dict[str, Any]) -> list[Callback]:
        """What every run has: its checkpoints, recovery, timings and artefacts."""
        checkpoints = self.run_dir / "checkpoints"
        # best: lowest val/loss (accuracy ties early, at 1.0, and would keep an undertrained
        # model). last: every epoch, in its own callback, because Lightning's save_last only
        # writes when a best checkpoint was written in the same step.
        best = ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val/loss", mode="min")
        last = ModelCheckpoint(dirpath=checkpoints, filename="last", enable_version_counter=False)
        self.preemption = Preemption(checkpoints / "last.ckpt")
        timings = Timings()
        test_follows = self.subcommand == "fit" and self.run_options.test_after_fit
        artefacts = RunArtefacts(
            self.run_dir, identity, timings, test_follows_fit=test_follows, recipe=recipe
        )
        recovery = [RandomState(), self.preemption, NonFiniteLossStop(checkpoints / "last.ckpt")]
        return [*recovery, timings, best, last, artefacts]

    def _resolve_ckpt_path(self, root: Path) -> Path | None:
        """Turn ``--ckpt_path last`` (or a run directory, or a checkpoint inside one) into a
        checkpoint file; for ``fit``, return the run directory that the fit continues in."""
        ckpt_path = self._get(self.config_init, "ckpt_path")
        name = self.run_options.name if self.subcommand == "fit" else None
        resolved = resolve_checkpoint(ckpt_path, self.subcommand, root, name, self.run_identity.name_prefix())
        if resolved is None:
            return None
        if resolved.checkpoint is None:
            rank_zero_only(sys.stderr.write)(resolved.note)
            self._set_ckpt_path(None)
            return None
        if str(resolved.checkpoint) != str(ckpt_path):
            # LightningCLI took the model's config from the checkpoint only if it was named as a
            # file; a resolved one may hold another model (e.g. a run of another width).
            check_checkpoint_fits(read_checkpoint(resolved.checkpoint), self.model, resolved.checkpoint)
        self._set_ckpt_path(str(resolved.checkpoint))
        return resolved.run_dir if self.subcommand == "fit" else None

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the model's config from a --ckpt_path file here; read it safely
        # first, so that a truncated or foreign file ends in one line naming it.
        ckpt_path = self.config.get("subcommand") and self.config[self.config.subcommand].get("ckpt_path")
        if ckpt_path and Path(ckpt_path).is_file():
            read_checkpoint(ckpt_path)
        super()._parse_ckpt_path()

    def _set_ckpt_path(self, value: str | None) -> None:
        self.config_init[self.subcommand]["ckpt_path"] = value

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
            if user_error(error) is not None:
                self.run.abandon()
            raise
        finish_tracking()

    def after_fit(self) -> None:
        if self.run_options.test_after_fit and not self.trainer.interrupted:
            for callback in self.trainer.callbacks:
                if isinstance(callback, WeightAveraging):
                    # Its averaged copy belongs to the fit: while it exists, Lightning's callback
                    # loads a checkpoint's raw weights over its averaged ones (it resumes the fit),
                    # and the test would score the raw weights; without it, the averaged.
                    callback._average_model = None
            best = self.trainer.checkpoint_callback.best_model_path
            self.trainer.test(
                self.model,
                datamodule=self.datamodule,
                ckpt_path=best or None,
                verbose=not self.run_options.quiet,
            )


def check_model_fits_data(model: SymmetryModule, datamodule: ImageDataModule) -> None:
    """Raise a one-line error where ``model`` cannot train on ``datamodule``.

    Only here do model and data meet: a backbone's exact claims may depend on the image size,
    its total stride must fit in the images, and segmentation needs masks (which this switches on).

    Args:
        model: The module to train, test or predict with.
        datamodule: The data it will see.

    Raises:
        SymtrainError: The images are too small for the backbone, the symmetry strategy does not
            fit it, or segmentation is asked of data without masks.
    """
    backbone, size = model.net.backbone, datamodule.image_size
    stride, channels = backbone.total_stride, datamodule.in_channels
    if not backbone.runs_at(size, channels):
        # The next multiple of the total stride that runs (a layer's padding may need a
        # larger map than one cell; some layers need sides that divide evenly).
        multiples = range(max(stride, size + -size % stride), 4 * max(size, stride) + 1, stride)
        fit = next((side for side in multiples if backbone.runs_at(side, channels)), None)
        fix = f"pass e.g. --data.image_size {fit}" if fit else "choose a shallower backbone"
        if size < stride:
            raise SymtrainError(
                f"data.image_size {size} is too small for {backbone.name} (total stride "
                f"{stride}): its coarsest feature map would be empty; {fix}"
            )
        raise SymtrainError(
            f"{backbone.name} cannot run on {size}x{size} images (a layer's map is smaller than "
            f"its padding or kernel, or two maps added differ in size): {fix}"
        )
    model.symmetry.check(backbone, size, dense=model.segmentation)
    if model.segmentation:
        if not datamodule.has_masks:
            raise SymtrainError(
                f"{type(datamodule).__name__} has no masks to segment: use SyntheticShapes "
                "or ImageFolder with --data.init_args.masks_root DIR, "
                "or drop configs/task/segmentation.yaml"
            )
        datamodule.with_masks = True


def _as_list(callbacks: Any) -> list[Any]:
    """``trainer.callbacks`` as a list: a config may give one callback alone, or none."""
    if callbacks is None:
        return []
    return list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]


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
        sys.stderr.write(f"symtrain: error: {error_line(mistake)}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
