"""How :class:`~symtrain.module.SymmetryModule` optimises: its training recipe (the optimizer
and learning-rate schedule its settings choose, :func:`~symtrain.recipes.recipe_of`), the
Lightning hooks that build and step them, and the checks that keep a resumed fit on the recipe
and schedule its checkpoint was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from symtrain.errors import SymtrainError
from symtrain.recipes import (
    PLATEAU_MONITOR,
    LRSchedulerCallable,
    OptimizerCallable,
    UpdateCountScheduler,
    check_optimizer,
    check_scheduler,
    describe,
    parameter_groups,
    recipe_of,
    recipe_outline,
    short_name,
)


class RecipeMixin:
    """The optimizer and schedule part of a LightningModule whose ``hparams`` hold the default
    recipe's settings (``lr``, ``weight_decay``, ``lr_schedule``, ``lr_interval``,
    ``decay_norms_and_biases``) and which keeps the injected ``optimizer`` and ``lr_scheduler``
    callables as ``_optimizer_factory`` and ``_scheduler_factory``. Mixed in before
    ``LightningModule``, whose ``lr_scheduler_step`` it extends.
    """

    _optimizer_factory: OptimizerCallable | None
    _scheduler_factory: LRSchedulerCallable | None
    # The one-cycle schedule's length as a resumed checkpoint planned it and as this fit does.
    _schedule_steps: dict[str, int | None]

    def _check_recipe_settings(self) -> None:
        """A config never holds a setting that does not apply: the default recipe's settings are
        None when an optimizer or scheduler replaces it."""
        hparams = self.hparams
        replaced = [
            ("optimizer", self._optimizer_factory, ("lr", "weight_decay", "lr_schedule")),
            ("lr_scheduler", self._scheduler_factory, ("lr_schedule",)),
        ]
        for key, factory, settings in replaced:
            if factory is None:
                continue
            name = short_name(describe(factory, hparams.get(key))["class_path"])
            for setting in settings:
                if hparams.get(setting) is not None:
                    where = {"lr": "its init_args.lr", "weight_decay": "its init_args.weight_decay"}
                    instead = where.get(setting, "model.lr_scheduler (or none: a constant lr)")
                    raise SymtrainError(
                        f"model.{setting} {hparams[setting]} does not apply with model.{key} {name}: "
                        f"set model.{setting} null and give it as {instead}"
                    )
        if self._scheduler_factory is None and hparams.get("lr_interval") is not None:
            raise SymtrainError(
                f"model.lr_interval {hparams['lr_interval']} applies to model.lr_scheduler, which is not "
                "given: set model.lr_interval null, or give model.lr_scheduler"
            )

    def recipe(self, ema: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What this module trains with, from its hyperparameters (so before the optimizer
        exists): ``summary.json``'s and wandb's ``recipe``, and the report's recipe column.

        Args:
            ema: the settings of the run's ``EMAWeightAveraging`` callback (``decay``, ...), if any.

        Returns:
            ``optimizer`` and ``lr_scheduler`` (each ``{"class_path", "init_args"}``, or for the
            schedule ``onecycle`` or ``constant``), ``lr_interval`` (``step``, ``epoch``, or None
            for a constant rate), ``decay_norms_and_biases``, and ``ema`` when given.

        Examples:
            >>> from functools import partial
            >>> from symtrain.backbones import StandardCNN
            >>> from symtrain.module import SymmetryModule
            >>> module = SymmetryModule(partial(StandardCNN, width=4, depth=1), num_classes=3)
            >>> recipe = module.recipe()
            >>> recipe["optimizer"]
            {'class_path': 'torch.optim.AdamW', 'init_args': {'lr': 0.003, 'weight_decay': 0.0001}}
            >>> recipe["lr_scheduler"], recipe["lr_interval"]
            ('onecycle', 'step')
        """
        recipe = recipe_of(self.hparams, self._optimizer_factory, self._scheduler_factory)
        return {**recipe, "ema": dict(ema)} if ema is not None else recipe

    @property
    def lr_interval(self) -> str:
        """When an injected scheduler steps (``lr_interval``, or ``epoch`` when None)."""
        return self.hparams.get("lr_interval") or "epoch"

    def _check_recipe_continues(self, trained: Mapping[str, Any]) -> None:
        """A resumed fit must configure the optimizer and scheduler the checkpoint's states belong
        to: loaded into another one, they fail at its first step or silently train on with the
        saved settings."""
        was, now = recipe_outline(trained), recipe_outline(self.hparams)
        if was != now:
            raise SymtrainError(
                f"the checkpoint was trained with {was} but this fit configures {now}: resume with the "
                "settings the run started with (its config.yaml), or start a new run"
            )

    def _check_schedule_continues(self) -> None:
        """A resumed fit must plan the one-cycle schedule it continues: its length is part of the
        run (torch's OneCycleLR fails mid-training when stepped past it). Checked once both the
        checkpoint's plan and this fit's are known (Lightning restores before or after it
        configures the optimiser, depending on the strategy)."""
        planned, now = self._schedule_steps.get("checkpoint"), self._schedule_steps.get("fit")
        if planned is not None and now is not None and planned != now:
            raise SymtrainError(
                f"the checkpoint continues a one-cycle learning-rate schedule of {planned} steps but this "
                f"fit plans {now} (another --trainer.max_epochs, batch size or data): resume with the "
                "settings the run started with, or start a new run"
            )

    def configure_optimizers(self) -> Any:
        recipe = self.recipe()
        parameters = parameter_groups(self, recipe["decay_norms_and_biases"])
        if self._optimizer_factory is None:
            settings = recipe["optimizer"]["init_args"]  # lr and weight_decay, defaults filled in
            optimizer = torch.optim.AdamW(parameters, **settings)
        else:
            optimizer = self._optimizer_factory(parameters)
            check_optimizer(optimizer, self._recipe_name("optimizer"))
        if self._scheduler_factory is not None:
            return {"optimizer": optimizer, "lr_scheduler": self._injected_scheduler(optimizer)}
        if recipe["lr_scheduler"] == "constant":
            return optimizer
        total_steps = self.trainer.estimated_stepping_batches
        self._schedule_steps["fit"] = total_steps
        self._check_schedule_continues()
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=settings["lr"], total_steps=total_steps
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _recipe_name(self, key: str) -> str:
        """The injected optimizer's or scheduler's class, as messages name it."""
        factory = self._optimizer_factory if key == "optimizer" else self._scheduler_factory
        return short_name(describe(factory, self.hparams.get(key))["class_path"])

    def _injected_scheduler(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Lightning's scheduler config for ``lr_scheduler``, checked against this fit."""
        scheduler = self._scheduler_factory(optimizer)
        trainer = self.trainer
        check_scheduler(
            scheduler,
            self._recipe_name("lr_scheduler"),
            self.lr_interval,
            stepping_batches=trainer.estimated_stepping_batches,
            max_epochs=trainer.max_epochs,
            validates=trainer.limit_val_batches != 0,
        )
        config = {"scheduler": scheduler, "interval": self.lr_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = PLATEAU_MONITOR
        return config

    def lr_scheduler_step(self, scheduler: Any, metric: Any | None) -> None:
        if not isinstance(scheduler, UpdateCountScheduler):
            super().lr_scheduler_step(scheduler, metric)
            return
        # timm's schedulers are told how far training is, as timm's train.py tells them: the
        # epochs done when an epoch ends (Lightning calls this before counting it), the
        # optimizer updates done after a step (global_step already counts this one).
        extra = {} if metric is None else {"metric": metric}
        if self.lr_interval == "step":
            scheduler.step_update(num_updates=self.global_step, **extra)
        else:
            scheduler.step(epoch=self.current_epoch + 1, **extra)
