"""symtrain's fit against the loop anyone would write, round after round in alternating order,
and the plain training step and quickstart network of the step-level sections."""

from __future__ import annotations

import copy
import importlib
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn

from scripts.benchmark import ROOT
from scripts.benchmark.memory import peak_memory
from scripts.benchmark.sizes import Sizes
from scripts.benchmark.timing import synchronize
from symtrain.cli import SymtrainCLI
from symtrain.metrics import EquivarianceMetrics


class TrainWindow(Callback):
    """Times training batches ``warmup``.. to the end of the epoch (validation excluded)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.seconds = 0.0
        self.images = 0

    def on_train_batch_start(self, trainer: Trainer, module: LightningModule, batch: Any, index: int) -> None:
        if index == self.warmup:
            synchronize(module.device)
            self.start = time.perf_counter()
        if index >= self.warmup:
            self.images += len(batch[1])

    def on_train_batch_end(
        self, trainer: Trainer, module: LightningModule, outputs: Any, batch: Any, index: int
    ) -> None:
        if index == trainer.num_training_batches - 1:  # no sync before: the GPU queue stays full
            synchronize(module.device)
            self.seconds = time.perf_counter() - self.start


def symtrain_cli(root: Path, accelerator: str, *overrides: str) -> SymtrainCLI:
    args = [
        "--config", str(ROOT / "configs" / "quickstart.yaml"),
        "--trainer.max_epochs", "1",
        "--trainer.accelerator", accelerator,
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--run.wandb", "false",
        "--run.quiet", "true",
        *overrides,
    ]  # fmt: skip
    return SymtrainCLI(args=args, run=False)


def fit_round(root: Path, accelerator: str, sizes: Sizes, *overrides: str) -> dict[str, Any]:
    """One symtrain fit of one epoch: training images/s, the metrics' time, and the network
    and data it trained on (for the hand-written loop)."""
    samples = [] if sizes.metrics_samples is None else ["--metrics.num_samples", str(sizes.metrics_samples)]
    cli = symtrain_cli(
        root, accelerator, "--data.init_args.num_train", str(sizes.num_train),
        "--metrics.every_n_epochs", "1", *samples, *overrides,
    )  # fmt: skip
    window = TrainWindow(sizes.warmup)
    metrics = next(c for c in cli.trainer.callbacks if isinstance(c, EquivarianceMetrics))
    measure, metric_seconds = metrics.measure, []

    def timed_measure(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = measure(*args, **kwargs)
        metric_seconds.append(time.perf_counter() - start)  # measure() ends in a host sync
        return result

    metrics.measure = timed_measure
    cli.trainer.callbacks.append(window)
    untrained = copy.deepcopy(cli.model.net)
    cli.trainer.fit(cli.model, cli.datamodule)
    batches = cli.trainer.num_training_batches
    return {
        "images_per_s": window.images / window.seconds,
        "epoch_s": window.seconds * batches / (batches - sizes.warmup),  # warm-up batches at the same pace
        "metrics_s": sum(metric_seconds),
        "net": untrained,
        "split": cli.datamodule.splits["train"],
        "splits": cli.datamodule.splits,
        "recipe": cli.model.recipe(),
        "batch_size": cli.datamodule.batch_size,
        "peak_memory": peak_memory(cli.model.device),
    }


def hand_written_loop(fit: dict[str, Any], device: torch.device, warmup: int) -> float:
    """The loop anyone would write: data in memory on the device, the fit's optimizer and
    schedule (AdamW with one-cycle by default) built directly, and nothing else. Returns
    training images/s over the same window as :class:`TrainWindow`."""
    net, split, batch_size = fit["net"].to(device).train(), fit["split"], fit["batch_size"]
    images, labels = split.images.to(device), split.labels.to(device)
    num_batches = -(-len(labels) // batch_size)
    recipe = fit["recipe"]

    def built(spec: dict[str, Any], *args: Any) -> Any:
        module_name, _, name = spec["class_path"].rpartition(".")
        return getattr(importlib.import_module(module_name), name)(*args, **spec["init_args"])

    optimizer = built(recipe["optimizer"], net.parameters())
    if recipe["lr_scheduler"] == "onecycle":
        lr = recipe["optimizer"]["init_args"]["lr"]
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=num_batches)
    elif isinstance(recipe["lr_scheduler"], dict):
        scheduler = built(recipe["lr_scheduler"], optimizer)
    else:
        scheduler = None
    per_step = scheduler is not None and recipe["lr_interval"] == "step"
    order = torch.randperm(len(labels), device=device)
    start, counted = 0.0, 0
    for index in range(num_batches):
        if index == warmup:
            synchronize(device)
            start = time.perf_counter()
        batch = order[index * batch_size : (index + 1) * batch_size]
        x, y = images[batch].float().div_(255), labels[batch]
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if per_step:
            scheduler.step()
        counted += len(batch) if index >= warmup else 0
    synchronize(device)
    return counted / (time.perf_counter() - start)


def interleaved_rounds(
    root: Path, accelerator: str, device: torch.device, sizes: Sizes, *fit_args: str
) -> dict[str, Any]:
    """symtrain's fit and the hand-written loop, round after round in alternating order (a drift
    of the machine's speed favours neither), after a warm-up round of each (allocator, cuDNN,
    page cache): their images/s, the metrics' share of each epoch, and the last fit."""
    symtrain_rates, hand_rates, shares, epochs = [], [], [], []
    fit = fit_round(root, accelerator, sizes, *fit_args)
    hand_written_loop(fit, device, sizes.warmup)
    for round_ in range(sizes.rounds):
        if round_ % 2:
            hand_rates.append(hand_written_loop(fit, device, sizes.warmup))
        fit = fit_round(root, accelerator, sizes, *fit_args)
        symtrain_rates.append(fit["images_per_s"])
        if not round_ % 2:
            hand_rates.append(hand_written_loop(fit, device, sizes.warmup))
        shares.append(fit["metrics_s"] / fit["epoch_s"])
        epochs.append(fit["epoch_s"])
    return {"symtrain": symtrain_rates, "hand": hand_rates, "shares": shares, "epochs": epochs, "fit": fit}


def quickstart_net(root: Path, device: torch.device) -> nn.Module:
    """The quickstart's network, as its config builds it, in training mode on ``device``."""
    return symtrain_cli(root, "cpu", "--data.init_args.num_train", "64").model.net.to(device).train()


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    optimizer.step()
