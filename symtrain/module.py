"""The LightningModule: a backbone, a symmetry strategy and a task head, composed.

The trained network itself is a plain ``nn.Module`` that maps images in [0, 1] to logits:
:class:`SymmetryNet` (normalisation, backbone, pooled classification head) for
classification, :class:`SegmentationNet` (normalisation, the backbone as the encoder of a
U-Net, its decoder) for segmentation. :class:`SymmetryModule` adds what only training needs
(the strategy, the loss, metrics and the optimiser).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from symtrain.backbones import Backbone, BackboneFactory, StandardCNN
from symtrain.distributed import check_same_model_on_every_rank
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
from symtrain.symmetry import NoSymmetry, SymmetryStrategy
from symtrain.symmetry.base import StrategyNet, StrategyStatistics
from symtrain.tasks import TASKS, Segmentation

Task = Literal["classification", "segmentation"]

# State that older versions saved although nothing in it is learned: the Augmentation
# strategy's kornia pipelines (one per image size, e.g.
# ``symmetry.pipelines.28x28.RandomRotation_0._param_generator.degrees``). Dropped on loading.
_STALE_STATE_PREFIXES = ("symmetry.pipelines.",)


class Normalize(nn.Module):
    """Per-channel standardisation, part of the model so transformations act on raw images."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std


class ClassificationHead(nn.Module):
    """Global average pooling and a linear classifier: spatial invariance comes from the pooling."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features.mean(dim=(-2, -1)))  # (B, C, h, w) -> (B, num_classes)


class SymmetryNet(nn.Module):
    """The network alone: images in [0, 1] (B, C, H, W) -> logits (B, num_classes).

    Examples:
        >>> net = SymmetryNet(Normalize([0.5], [0.5]), StandardCNN(1, width=4, depth=1), 3)
        >>> net(torch.rand(2, 1, 16, 16)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self, normalize: Normalize, backbone: Backbone, num_classes: int, head: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.head = ClassificationHead(backbone.out_channels, num_classes) if head is None else head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(self.normalize(images)))

    def export(self) -> SymmetryNet:
        """The same network with an escnn backbone as plain torch modules (identical outputs,
        no escnn at inference), in eval mode; itself when there is nothing to export."""
        if not hasattr(self.backbone, "export"):
            return self
        return SymmetryNet(self.normalize, self.backbone.export(), 0, head=self.head).eval()


class SegmentationNet(nn.Module):
    """The network alone: images in [0, 1] (B, C, H, W) -> per-pixel logits (B, num_classes, H, W).

    The backbone is the encoder of a U-Net and builds its own decoder
    (:meth:`~symtrain.backbones.Backbone.decoder`), so the dense output keeps the backbone's
    symmetry: an escnn C4 model's logits rotate exactly with the image.

    Examples:
        >>> net = SegmentationNet(Normalize([0.5], [0.5]), StandardCNN(1, width=4, depth=2), 3)
        >>> net(torch.rand(2, 1, 16, 16)).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(
        self, normalize: Normalize, backbone: Backbone, num_classes: int, decoder: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.decoder = backbone.decoder(num_classes) if decoder is None else decoder

    def forward(self, images: Tensor) -> Tensor:
        return self.decoder(self.backbone.encode(self.normalize(images)))

    def export(self) -> SegmentationNet:
        """The same network with an escnn encoder and decoder as plain torch modules (identical
        outputs, no escnn at inference), in eval mode; itself when there is nothing to export."""
        if not hasattr(self.backbone, "export_encoder"):
            return self
        encoder, decoder = self.backbone.export_encoder(), self.decoder.export()
        return SegmentationNet(self.normalize, encoder, 0, decoder=decoder).eval()


class SymmetryModule(pl.LightningModule):
    """A classifier or segmenter composed from a backbone and a symmetry strategy.

    Batches arrive as uint8 images (and, for segmentation, masks); :meth:`on_after_batch_transfer`
    turns them into floats in [0, 1] on the device and, while training, lets the strategy
    augment them there (masks with the same transformation).

    Args:
        backbone: the feature extractor class and its settings; it receives ``in_channels``.
        symmetry: how the model gets its symmetry (default: :class:`NoSymmetry`).
        num_classes: number of classes (linked from the data by the CLI). A segmentation
            predicts one more, the background, as class 0 (mask value k is class k - 1).
        in_channels: image channels (linked from the data by the CLI).
        mean: per-channel mean of the images in [0, 1] (linked from the data).
        std: per-channel standard deviation (linked from the data).
        lr: peak learning rate of the default recipe's AdamW (None: 3e-3). Does not apply, and
            must stay None, when ``optimizer`` is given (its ``init_args.lr`` is the rate).
        weight_decay: the default recipe's AdamW weight decay (None: 1e-4); None with ``optimizer``.
        lr_schedule: the default recipe's schedule (None: ``onecycle``): ``onecycle`` (warm-up
            then cosine decay over the whole fit, stepped per step) or ``constant``. None when
            ``optimizer`` or ``lr_scheduler`` is given.
        optimizer: any optimizer in place of AdamW, by ``class_path`` and ``init_args`` in a config
            (``torch.optim.SGD``, ``timm.optim.Lamb``, ...); it receives the parameters. Without
            ``lr_scheduler`` its learning rate stays constant.
        lr_scheduler: any learning-rate scheduler in place of the one-cycle schedule, by
            ``class_path`` and ``init_args``: a ``torch.optim.lr_scheduler`` class (it receives the
            optimizer; ``ReduceLROnPlateau`` steps on ``val/loss``) or a timm scheduler
            (``timm.scheduler.CosineLRScheduler``: stepped with the epochs or the updates done).
        lr_interval: when ``lr_scheduler`` steps: ``epoch`` (None means epoch) or ``step`` (after
            every optimizer step). None without ``lr_scheduler``.
        decay_norms_and_biases: apply weight decay to every parameter (True, as every run before
            this option), or, as timm's recipes do, not to biases and normalisation layers (False:
            they form a parameter group with weight decay 0, for any optimizer).
        label_smoothing: cross-entropy label smoothing.
        channels_last: keep weights and batches in channels-last memory order (faster
            convolutions on GPUs with tensor cores, notably with mixed precision).
        compile: train and evaluate through ``torch.compile`` (plain and anti-aliased CNNs;
            escnn's Python-level field types break the graph, so it gains little there).
        task: ``classification`` (logits per image, invariant) or ``segmentation`` (logits
            per pixel, equivariant; the backbone's dense form).
        dice_weight: segmentation loss = cross-entropy + ``dice_weight`` x Dice loss (kornia's,
            averaged over classes); 0 is cross-entropy alone.

    Examples:
        >>> from functools import partial
        >>> module = SymmetryModule(partial(StandardCNN, width=4, depth=1), num_classes=3)
        >>> module(torch.rand(2, 1, 16, 16)).shape
        torch.Size([2, 3])
        >>> tiny = partial(StandardCNN, width=4, depth=1)
        >>> segmenter = SymmetryModule(tiny, num_classes=3, task="segmentation")
        >>> segmenter(torch.rand(2, 1, 16, 16)).shape  # background + 3 classes per pixel
        torch.Size([2, 4, 16, 16])
    """

    def __init__(
        self,
        backbone: BackboneFactory = StandardCNN,
        symmetry: SymmetryStrategy | None = None,
        num_classes: int = 10,
        in_channels: int = 1,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        lr: float | None = None,
        weight_decay: float | None = None,
        lr_schedule: Literal["onecycle", "constant"] | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_interval: Literal["epoch", "step"] | None = None,
        decay_norms_and_biases: bool = True,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
        task: Task = "classification",
        dice_weight: float = 0.0,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():
            # Lightning suggests ignoring nn.Module arguments; the strategy holds no weights and
            # ignoring it would drop it from the config that rebuilds the model on loading.
            warnings.filterwarnings("ignore", message=r".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        # The injected callables themselves: the CLI saves their config (class_path and
        # init_args) as hyperparameters, from which a checkpoint rebuilds them.
        self._optimizer_factory = optimizer
        self._scheduler_factory = lr_scheduler
        self._check_recipe_settings()
        # The task builds the network around the backbone and says what it is scored on.
        self.task = TASKS[task](label_smoothing, dice_weight)
        self.num_outputs = self.task.outputs(num_classes)
        self.symmetry = symmetry if symmetry is not None else NoSymmetry()
        plain = self.task.network(Normalize(mean, std), backbone(in_channels), self.num_outputs)
        self.symmetry.check(plain.backbone, dense=self.segmentation)
        # The network the strategy makes of it (itself, or a wrapper that averages or
        # canonicalises): what every step, measurement, prediction and reload runs.
        self.net = self.symmetry.wrap(plain)
        # Loss and scores accumulate on the device at every step and are logged once per epoch:
        # a self.log call per step costs more than a small model's step on a GPU. (ModuleDict
        # keys may not shadow nn.Module attributes such as ``train``.)
        stages = ("train", "val", "test")
        # nan_strategy="disable": the default looks for NaNs on the host at every update (a sync
        # per step), and would drop them from the mean; a NaN loss is NonFiniteLossStop's job.
        self.mean_loss = nn.ModuleDict(
            {f"{stage}_loss": MeanMetric(nan_strategy="disable") for stage in stages}
        )
        # compute_groups=False: grouping compares the metrics' states after the first update,
        # which reads them on the host.
        self.scores = nn.ModuleDict(
            {
                f"{stage}_scores": MetricCollection(
                    self.task.scores(self.num_outputs), prefix=f"{stage}/", compute_groups=False
                )
                for stage in stages
            }
        )
        # What a wrapper chooses per input (a canonical pose) and its penalty, per stage.
        labels = self.net.element_labels if isinstance(self.net, StrategyNet) else ()
        self.strategy_stats = nn.ModuleDict(
            {f"{stage}_strategy": StrategyStatistics(labels) for stage in stages}
            if isinstance(self.net, StrategyNet)
            else {}
        )
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        # Kept out of the module tree (no second copy of the weights in state dicts); built in
        # setup, once the model sits on its device.
        self._compiled: nn.Module | None = None
        # The one-cycle schedule's length as a resumed checkpoint planned it and as this fit does.
        self._schedule_steps: dict[str, int | None] = {}

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

    @staticmethod
    def without_stale_state(state: dict[str, Any]) -> dict[str, Any]:
        """``state`` (a checkpoint's ``state_dict``) without entries older versions saved that
        hold nothing learned, so their checkpoints load too."""
        return {key: value for key, value in state.items() if not key.startswith(_STALE_STATE_PREFIXES)}

    def without_cache(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """``state`` without what the backbone caches from its weights (as the backbone says)."""
        return self.net.backbone.without_cache(state)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this before load_state_dict, on resuming and in load_from_checkpoint.
        checkpoint["state_dict"] = self.without_stale_state(checkpoint["state_dict"])
        if "optimizer_states" in checkpoint and self._trainer is not None and self._trainer.state.fn == "fit":
            self._check_recipe_continues(checkpoint.get("hyper_parameters") or {})
        planned = [state.get("total_steps") for state in checkpoint.get("lr_schedulers", [])]
        self._schedule_steps["checkpoint"] = planned[0] if planned else None
        self._check_schedule_continues()

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

    @property
    def num_params(self) -> int:
        """Trainable parameters of the network (what comparisons of width are about)."""
        return sum(p.numel() for p in self.net.parameters() if p.requires_grad)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def setup(self, stage: str) -> None:
        check_same_model_on_every_rank(self, self.trainer)
        if self.hparams.compile and self._compiled is None:
            self.__dict__["_compiled"] = torch.compile(self.net)
        unsyncable = self.net.backbone.unsyncable_norms()
        unsynced = {type(m).__name__ for m in self.modules() if unsyncable and isinstance(m, unsyncable)}
        if self.trainer.world_size > 1 and getattr(self.trainer.strategy, "_layer_sync", None) and unsynced:
            rank_zero_warn(
                f"sync_batchnorm synchronises torch's batch norms but "
                f"not {', '.join(sorted(unsynced))}: their statistics stay per process"
            )

    @property
    def segmentation(self) -> bool:
        return isinstance(self.task, Segmentation)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels, *masks = batch  # masks: (B, H, W) class indices, for segmentation only
        images = images.float().div_(255)  # uint8 (B, C, H, W) -> floats in [0, 1]
        masks = [mask.long() for mask in masks]
        if self.trainer.training and masks:
            images, masks[0] = self.symmetry.augment(images, masks[0])
        elif self.trainer.training:
            images = self.symmetry.augment(images)
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels, *masks

    def _shared_step(self, batch: tuple[Tensor, ...], stage: str) -> Tensor:
        images, labels, *masks = batch
        targets = self.task.targets(labels, masks)  # (B,) or (B, H, W)
        logits = (self.net if self._compiled is None else self._compiled)(images)
        loss = self.task.loss(logits, targets)
        if self.strategy_stats:
            penalty = self.net.penalty()  # computed once: logged, and in training also minimised
            self.strategy_stats[f"{stage}_strategy"].update(self.net.choices(), penalty)
            if penalty is not None and stage == "train":
                loss = loss + penalty
        # One value per image: MeanMetric ignores ``weight`` with nan_strategy="disable"
        # (torchmetrics 1.9), which would weigh a short last batch like a full one.
        self.mean_loss[f"{stage}_loss"].update(loss.detach().expand(len(labels)))
        self.scores[f"{stage}_scores"].update(logits, targets)
        return loss

    def _log_epoch(self, stage: str) -> None:
        # compute() reduces across processes (torchmetrics states), so every rank logs the
        # same mean over all of the epoch's samples.
        loss, scores = self.mean_loss[f"{stage}_loss"], self.scores[f"{stage}_scores"]
        self.log(f"{stage}/loss", loss.compute(), prog_bar=stage != "test")
        for name, value in scores.compute().items():  # {stage}/acc (and {stage}/miou)
            self.log(name, value, prog_bar=True)
        loss.reset()
        scores.reset()
        if self.strategy_stats:
            self._log_strategy(stage)

    def _log_strategy(self, stage: str) -> None:
        """The wrapper's choices over the epoch: shares per element (and their wandb histogram)
        and its penalty."""
        statistics = self.strategy_stats[f"{stage}_strategy"]
        for name, value in statistics.compute().items():
            self.log(f"{stage}/{name}", value)
        if statistics.labels and self.trainer.is_global_zero:
            counts = statistics.counts.detach().cpu()
            for logger in self.loggers:
                if isinstance(logger, WandbLogger):
                    import wandb

                    edges = torch.arange(len(counts) + 1.0).numpy()
                    histogram = wandb.Histogram(np_histogram=(counts.numpy(), edges))
                    logger.experiment.log({f"{stage}/canonical/elements": histogram})
        statistics.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def on_predict_start(self) -> None:
        # Backbones that can export themselves (escnn) predict through the plain-torch export:
        # the same outputs without the field-type bookkeeping of every escnn layer.
        exported = self.net.export()
        if exported is not self.net:
            self.__dict__["_predictor"] = exported.to(self.device)

    def on_predict_end(self) -> None:
        self.__dict__.pop("_predictor", None)

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        images, labels, *masks = batch
        logits = self.__dict__.get("_predictor", self.net)(images)  # (B, K) or (B, K, H, W)
        masks = {"masks": masks[0]} if masks else {}
        return {"logits": logits, "preds": logits.argmax(dim=1), "labels": labels, **masks}

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
