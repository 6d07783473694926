"""The LightningModule: a backbone, a symmetry strategy and a task head, composed.

The trained network itself is a plain ``nn.Module`` that maps images in [0, 1] to logits
(:mod:`symtrain.nets`): :class:`SymmetryNet` (normalisation, backbone, pooled classification
head) for classification, :class:`SegmentationNet` (normalisation, the backbone as the encoder
of a U-Net, its decoder) for segmentation. :class:`SymmetryModule` adds what only training needs
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

from symtrain.backbones import BackboneFactory, StandardCNN
from symtrain.distributed import check_same_model_on_every_rank

# The networks live in symtrain.nets, below this module and symtrain.tasks; they stay importable
# from here, where configs, scripts and older code name them (symtrain.module.SymmetryNet).
from symtrain.nets import ClassificationHead, Normalize, SegmentationNet, SymmetryNet  # noqa: F401
from symtrain.optimization import RecipeMixin
from symtrain.recipes import LRSchedulerCallable, OptimizerCallable
from symtrain.symmetry import NoSymmetry, SymmetryStrategy
from symtrain.symmetry.base import StrategyNet, StrategyStatistics
from symtrain.tasks import TASKS, Segmentation

Task = Literal["classification", "segmentation"]

# State that older versions saved although nothing in it is learned: the Augmentation
# strategy's kornia pipelines (one per image size, e.g.
# ``symmetry.pipelines.28x28.RandomRotation_0._param_generator.degrees``). Dropped on loading.
_STALE_STATE_PREFIXES = ("symmetry.pipelines.",)


class SymmetryModule(RecipeMixin, pl.LightningModule):
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

    def on_train_epoch_end(self) -> None:
        log_epoch(self, "train")

    def on_validation_epoch_end(self) -> None:
        log_epoch(self, "val")

    def on_test_epoch_end(self) -> None:
        log_epoch(self, "test")

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


def log_epoch(module: SymmetryModule, stage: str) -> None:
    """Log the epoch's mean loss and scores (and a wrapper's choices) for ``stage``, then reset them.

    ``compute()`` reduces across processes (torchmetrics states), so every rank logs the same mean
    over all of the epoch's samples.

    Args:
        module: The module whose per-stage metrics accumulated over the epoch.
        stage: ``train``, ``val`` or ``test``.
    """
    loss, scores = module.mean_loss[f"{stage}_loss"], module.scores[f"{stage}_scores"]
    module.log(f"{stage}/loss", loss.compute(), prog_bar=stage != "test")
    for name, value in scores.compute().items():  # {stage}/acc (and {stage}/miou)
        module.log(name, value, prog_bar=True)
    loss.reset()
    scores.reset()
    if module.strategy_stats:
        log_strategy(module, stage)


def log_strategy(module: SymmetryModule, stage: str) -> None:
    """Log a wrapper's choices over the epoch: shares per element (and their wandb histogram)
    and its penalty; then reset them.

    Args:
        module: The module whose network is a :class:`StrategyNet`.
        stage: ``train``, ``val`` or ``test``.
    """
    statistics = module.strategy_stats[f"{stage}_strategy"]
    for name, value in statistics.compute().items():
        module.log(f"{stage}/{name}", value)
    if statistics.labels and module.trainer.is_global_zero:
        counts = statistics.counts.detach().cpu()
        for logger in module.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                edges = torch.arange(len(counts) + 1.0).numpy()
                histogram = wandb.Histogram(np_histogram=(counts.numpy(), edges))
                logger.experiment.log({f"{stage}/canonical/elements": histogram})
    statistics.reset()
