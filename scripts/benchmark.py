"""What symtrain costs, measured against the limits, side by side in one process.

    python scripts/benchmark.py --quick              # small sizes, under two minutes on a CPU
    python scripts/benchmark.py --json bench.json    # full sizes (meant for a GPU)
    make bench                                       # the quick version

Sections (each reports ratios of things measured in the same run, interleaved over rounds,
median of the rounds, because a shared machine's absolute speed wanders):

1. framework overhead: training images/s of symtrain's fit (the CLI's trainer, model and
   data) over a hand-written PyTorch loop on the same network, data, batch size, optimiser
   and schedule, with the default recipe (AdamW + one-cycle) and with the papers' SGD +
   MultiStepLR (configs/optim/sgd_multistep.yaml); target >= 0.95 each.
2. metrics cost: one run of the equivariance metrics (default settings) as a share of a
   training epoch of the quickstart; target <= 0.10. And ``symtrain.measure`` (what ``python
   -m symtrain measure`` runs) streaming the test subset from a DataLoader of uint8 batches,
   against the callback's pass over the same images held in memory: images/s, target >= 0.95.
3. augmentation cost: each family's on-device kornia augmentation as a share of a training
   step (target <= 0.10 on GPU, <= 0.20 on CPU), and batched kornia against a per-sample
   torchvision v2 pipeline in DataLoader workers.
4. symmetry strategies that wrap the network: each one's training step and inference over the
   plain quickstart network's (canonicalization: target <= 1.3x for training; group averaging
   costs |G| passes of the network by design, reported as measured).
5. equivariant layers: an escnn model's training step against a plain CNN with the same
   expanded convolution shapes (target <= 1.3x), and its eval-mode and exported inference
   (target <= 1.05x); for Fourier-field models (SO(2), O(2)) also against a plain CNN that
   has their nonlinearity, the work they do beyond the convolutions by design.
6. start-up: ``python -m symtrain --help`` (target < 2 s; it imports neither torch nor
   Lightning), ``fit --help`` (LightningCLI's full parser) beside the bare ``import
   lightning.pytorch`` that it cannot avoid, and a one-step ``fit`` of the quickstart.
7. scaling: training time per epoch against dataset size and image size (linear in images
   and in pixels: the normalised ratios should be ~1), and peak memory.
8. cost: a default ``fit`` on real digits (quickstart + ``configs/data/mnist5k.yaml``, wandb
   offline), process start to exit, split by the run's own ``summary.json`` (``seconds``):
   start-up, training, validation, equivariance measurements, test, and the rest (loggers,
   exit); target: training >= 80% of the wall time. And ``compare``'s start-up per cell,
   forked from the import server against a new interpreter per cell.
9. the literature's backbones: symtrain's fit of ResNet-18 (``configs/backbone/resnet18.yaml``,
   timm's blocks, and ``timm_resnet18.yaml``, timm's model) against the hand-written loop over
   the same network, data and optimiser (target >= 0.95); the escnn Wide ResNet D8D4D1's
   training step against the plain WRN with the same expanded convolutions (its own export,
   trained as plain torch; target <= 1.3x), and its eval-mode and exported inference (<= 1.05x).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from symtrain.backbones import EquivariantCNN, StandardCNN  # noqa: E402
from symtrain.backbones.equivariant import BlurPool, FourierActivation  # noqa: E402
from symtrain.cli import SymtrainCLI  # noqa: E402
from symtrain.metrics import EquivarianceMetrics, measures_for  # noqa: E402
from symtrain.metrics.base import registry  # noqa: E402
from symtrain.module import ClassificationHead, SymmetryModule  # noqa: E402
from symtrain.symmetry import Augmentation, Canonicalization, GroupAveraging  # noqa: E402
from symtrain.transforms import Affine, Diffeo, Elastic, Flip, Rot90, Rotation, Shift  # noqa: E402

AUGMENTATION_FAMILIES = {
    "rot90": Rot90,
    "flip": Flip,
    "shift": Shift,
    "rotation": Rotation,
    "affine": Affine,
    "elastic": Elastic,
    "diffeo": Diffeo,
}
ESCNN_CONFIGS = ("escnn_c4", "escnn_c8", "escnn_d4", "escnn_so2")


@dataclass
class Sizes:
    """How much work each section does; ``--quick`` and ``--tiny`` shrink it."""

    num_train: int  # training images of the overhead and metrics runs (6000: the quickstart)
    rounds: int  # interleaved repetitions; the median is reported
    steps: int  # timed steps of the step-level measurements
    warmup: int  # untimed steps first (cuDNN autotuning, escnn filter bases, allocator)
    scaling_train: tuple[int, ...]  # dataset sizes of the scaling section
    scaling_image: tuple[int, ...]  # image sizes of the scaling section
    escnn_configs: tuple[str, ...]
    startup_rounds: int
    metrics_samples: int | None  # the metrics' num_samples (None: the default)
    cost_flags: tuple[str, ...]  # the real-digit fit of the cost section, on top of the defaults
    resnet_train: int  # training images of the ResNet-18 fits (a CPU trains about 30 img/s)
    resnet_batch: int  # their batch size (the quickstart's 128 at full size)
    wrn: tuple[int, int, int]  # depth, widen factor and batch size of the WRN rows
    stream_train: tuple[int, int]  # training files of the streaming-memory fits: small, large
    photo_train: int  # photo-sized files of the loader-throughput rows


_DIGITS_FIT = ("--trainer.max_epochs", "8")  # the real-digit study's schedule
_TINY_FIT = (
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1", "--metrics.test_num_samples", "16",
)  # fmt: skip
FULL = Sizes(
    6000, 5, 30, 5, (10000, 20000, 40000), (32, 64, 128), ESCNN_CONFIGS, 3, None, _DIGITS_FIT,
    6000, 128, (16, 8, 128), (2000, 20000), 2000,
)  # fmt: skip
QUICK = Sizes(
    6000,
    3,
    8,
    2,
    (1000, 2000),
    (32, 64),
    ("escnn_c4",),
    1,
    None,
    _DIGITS_FIT,
    640,
    64,
    (10, 2, 32),
    (2000, 20000),
    600,
)
TINY = Sizes(
    300,
    1,
    2,
    1,
    (150, 300),
    (16, 32),
    ("escnn_c4", "escnn_so2"),
    1,
    16,
    _TINY_FIT,
    48,
    16,
    (10, 1, 8),
    (100, 400),
    64,
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


# --- 1 and 2: symtrain's fit against a hand-written loop, and the metrics' share of an epoch ---


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


def fit_round(root: Path, accelerator: str, sizes: Sizes, *overrides: str) -> dict[str, float]:
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
    import importlib

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


# The SGD recipe of the papers' ResNets (configs/optim/sgd_multistep.yaml), as a fit's flags.
SGD_RECIPE = ("--config", str(ROOT / "configs" / "optim" / "sgd_multistep.yaml"))


def overhead_and_metrics(
    root: Path, accelerator: str, device: torch.device, sizes: Sizes, *fit_args: str
) -> dict[str, Any]:
    rounds = interleaved_rounds(root, accelerator, device, sizes, *fit_args)
    sgd = interleaved_rounds(root, accelerator, device, sizes, *fit_args, *SGD_RECIPE)
    fit, epochs = rounds["fit"], rounds["epochs"]
    symtrain_rate, hand_rate = median(rounds["symtrain"]), median(rounds["hand"])
    return {
        "measure_over_callback": measure_throughput(fit, device, sizes),
        "measure_epoch_share": measure_costs(fit, device, median(epochs), sizes),
        "symtrain_images_per_s": symtrain_rate,
        "hand_written_images_per_s": hand_rate,
        "framework_overhead_ratio": symtrain_rate / hand_rate,
        "sgd_framework_overhead_ratio": median(sgd["symtrain"]) / median(sgd["hand"]),
        "train_epoch_s": median(epochs),
        # the callback measures every_n_epochs (default 2) epochs: its cost per epoch of a fit
        "metrics_epoch_share": median(rounds["shares"]) / EquivarianceMetrics().every_n_epochs,
        "metrics_measurement_share": median(rounds["shares"]),
    }


def _callback_on(fit: dict[str, Any], device: torch.device) -> tuple[Any, Any, nn.Module]:
    """The trainer and module the metrics callback reads, around the fitted network (eval mode)."""
    from types import SimpleNamespace

    net = copy.deepcopy(fit["net"]).to(device).eval()
    trainer = SimpleNamespace(global_rank=0, world_size=1, datamodule=SimpleNamespace(splits=fit["splits"]))
    module = SimpleNamespace(
        net=net,
        device=device,
        training=False,
        eval=lambda: None,
        train=lambda mode: None,
        log=lambda *a, **k: None,
    )
    return trainer, module, net


def measure_throughput(fit: dict[str, Any], device: torch.device, sizes: Sizes) -> float:
    """Images/s of ``symtrain.measure`` over the test subset streamed from a DataLoader of uint8
    batches (the ``measure`` command's path) / images/s of the callback's test measurement of
    the same images held in memory, every default measure; median over rounds, interleaved."""
    from symtrain.metrics.measuring import measure
    from symtrain.metrics.subset import stratified_subset

    trainer, module, net = _callback_on(fit, device)
    count = sizes.metrics_samples or EquivarianceMetrics().test_num_samples
    callback = EquivarianceMetrics(num_samples=count, test_num_samples=count)
    split = fit["splits"]["test"]
    chosen = split.subset(stratified_subset(split.labels, count, callback.settings.seed))
    dataset, collate = chosen.dataset(None, False)
    batch_size = 64 if device.type == "cpu" else 256
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    callback.measure(trainer, module, "test")  # warm-up: the first measurement builds caches
    ratios = []
    for round_ in range(min(3, sizes.rounds)):
        order = [0, 1] if round_ % 2 == 0 else [1, 0]
        seconds = [0.0, 0.0]
        for which in order:
            start = time.perf_counter()
            if which == 0:
                callback.measure(trainer, module, "test")
            else:
                measure(net, loader, callback.families, settings=callback.settings, device=device)
            synchronize(device)
            seconds[which] = time.perf_counter() - start
        ratios.append(seconds[0] / seconds[1])  # (count / measure's s) / (count / callback's s)
    return median(ratios)


def measure_costs(
    fit: dict[str, Any], device: torch.device, epoch_s: float, sizes: Sizes
) -> dict[str, float]:
    """Each measure alone, at default settings (default families, the default subset of its
    stage; ``--tiny``: its few images), as a share of a training epoch: median of three runs
    each (fewer when the sizes have fewer rounds). The opt-in measures (not run by default) are
    timed too."""
    trainer, module, _ = _callback_on(fit, device)
    shares = {}
    repeats = min(3, sizes.rounds)
    subset = {}
    if sizes.metrics_samples is not None:
        subset = {"num_samples": sizes.metrics_samples, "test_num_samples": sizes.metrics_samples}
    default = measures_for("classification", None)
    opt_in = [c for (task, _), c in registry().items() if task == "classification" and not c.default]
    for cls in default + opt_in:
        callback = EquivarianceMetrics(measures=[cls.key], **subset)
        stage = "val" if "val" in cls.stages else "test"
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            callback.measure(trainer, module, stage)
            seconds.append(time.perf_counter() - start)
        optional = "" if cls.default else ", opt-in"
        shares[f"{cls.key} ({stage}{optional})"] = median(seconds) / epoch_s
    # together, measures share views (the curve's shifted images serve jaggedness too)
    callback, seconds = EquivarianceMetrics(**subset), []
    for _ in range(repeats):
        start = time.perf_counter()
        callback.measure(trainer, module, "test")
        seconds.append(time.perf_counter() - start)
    shares["every default measure together (test, once per run)"] = median(seconds) / epoch_s
    return shares


# --- 3: augmentation ---


def quickstart_net(root: Path, device: torch.device) -> nn.Module:
    return symtrain_cli(root, "cpu", "--data.init_args.num_train", "64").model.net.to(device).train()


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    optimizer.step()


def repeat(function: Callable[[], Any], count: int, device: torch.device) -> float:
    """Seconds for ``count`` calls of ``function``."""

    def run() -> None:
        for _ in range(count):
            function()

    return timed(run, device)


def augmentation(root: Path, device: torch.device, sizes: Sizes, batch_size: int = 128) -> dict[str, Any]:
    torch.manual_seed(0)
    net = quickstart_net(root, device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    batch = torch.randint(0, 256, (batch_size, 1, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 8, (batch_size,), device=device)
    strategies = {name: Augmentation([family()]).to(device) for name, family in AUGMENTATION_FAMILIES.items()}
    augment_s: dict[str, list[float]] = {name: [] for name in strategies}
    step_s: list[float] = []
    for _ in range(sizes.rounds + 1):  # the first round warms up
        for name, strategy in strategies.items():
            augment_s[name].append(
                repeat(lambda s=strategy: s.augment(batch.float() / 255), sizes.steps, device)
            )
        step_s.append(
            repeat(lambda: train_step(net, optimizer, batch.float() / 255, labels), sizes.steps, device)
        )
    step = median(step_s[1:])
    augment = {name: median(times[1:]) for name, times in augment_s.items()}
    kornia_rate = sizes.steps * batch_size / augment["rotation"]
    torchvision_rate = torchvision_workers_rate(batch.cpu(), sizes)
    return {
        # the step with augmentation = the augmentation + the step without it
        "augmentation_step_share": {name: seconds / (seconds + step) for name, seconds in augment.items()},
        "kornia_rotation_images_per_s": kornia_rate,
        "torchvision_workers_rotation_images_per_s": torchvision_rate,
        "kornia_over_torchvision": kornia_rate / torchvision_rate,
    }


# --- 4: symmetry strategies that wrap the network ---


def strategy_nets() -> dict[str, Any]:
    """The wrapping strategies, as shipped in configs/symmetry/ (averaging costs |G| passes of
    the network by design: 4 for C4, 8 for D4 and for 8 sampled rotations)."""
    return {
        "average_c4": GroupAveraging([Rot90()]),
        "average_d4": GroupAveraging([Rot90(), Flip()]),
        "average_test_c4": GroupAveraging([Rot90()], mode="test"),
        "average_rotation (8 samples)": GroupAveraging([Rotation()], samples=8),
        "canonicalize_c4": Canonicalization(),
        "canonicalize_d4": Canonicalization("D"),
    }


def wrapped_train_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(net(x), y)
    penalty = net.penalty() if hasattr(net, "penalty") else None
    (loss if penalty is None else loss + penalty).backward()
    optimizer.step()


def strategies(root: Path, device: torch.device, sizes: Sizes, batch_size: int = 128) -> dict[str, Any]:
    """Training step and inference of each wrapping strategy over the plain quickstart network,
    interleaved in rounds, at the quickstart's batch and image size."""
    torch.manual_seed(0)
    plain = quickstart_net(root, device)
    nets = {
        "plain": plain,
        **{name: s.wrap(copy.deepcopy(plain)).to(device) for name, s in strategy_nets().items()},
    }
    optimizers = {name: torch.optim.AdamW(net.parameters(), lr=1e-3) for name, net in nets.items()}
    batch = torch.rand(batch_size, 1, 32, 32, device=device)
    labels = torch.randint(0, 8, (batch_size,), device=device)
    train_s: dict[str, list[float]] = {name: [] for name in nets}
    infer_s: dict[str, list[float]] = {name: [] for name in nets}

    def infer(net: nn.Module) -> None:
        with torch.no_grad():
            net(batch)

    for _ in range(sizes.rounds + 1):  # the first round warms up
        for name, net in nets.items():
            net.train()
            step = lambda n=net, o=optimizers[name]: wrapped_train_step(n, o, batch, labels)  # noqa: E731
            train_s[name].append(repeat(step, sizes.steps, device))
            net.eval()
            infer_s[name].append(repeat(lambda n=net: infer(n), sizes.steps, device))
    train = {name: median(times[1:]) for name, times in train_s.items()}
    inference = {name: median(times[1:]) for name, times in infer_s.items()}
    return {
        "strategy_cost": {
            name: {
                "train_ratio": train[name] / train["plain"],
                "infer_ratio": inference[name] / inference["plain"],
            }
            for name in nets
            if name != "plain"
        }
    }


class _PerSampleRotation(torch.utils.data.Dataset):
    def __init__(self, images: Tensor, length: int) -> None:
        from torchvision.transforms import v2

        self.images, self.length = images, length
        self.transform = v2.Compose([v2.RandomRotation(180.0), v2.ToDtype(torch.float32, scale=True)])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tensor:
        return self.transform(self.images[index % len(self.images)])


def torchvision_workers_rate(batch: Tensor, sizes: Sizes) -> float:
    """Per-sample torchvision v2 rotation in DataLoader workers, one per core, images/s after
    the workers have started."""
    workers = max(1, min(8, os.cpu_count() or 1))
    length = len(batch) * (sizes.steps + sizes.warmup) * workers
    loader = torch.utils.data.DataLoader(
        _PerSampleRotation(batch, length), batch_size=len(batch), num_workers=workers
    )
    batches = iter(loader)
    for _ in range(workers):  # every worker has delivered its first batch
        next(batches)
    start, count = time.perf_counter(), 0
    for images in batches:
        count += len(images)
    return count / (time.perf_counter() - start)


# --- 4: escnn against a plain CNN with the same expanded convolutions ---


def plain_twin(exported: nn.Sequential, fourier: bool = False) -> nn.Sequential:
    """A plain CNN with the exported escnn network's convolution shapes: its own conv weights,
    batch norm and ReLU, the same blur pooling; no field bookkeeping and no invariant map (the
    head pools spatially). ``fourier`` keeps the Fourier fields' nonlinearity (sample each
    field on a group grid, ReLU, project back) instead of a ReLU: the work that SO(2)/O(2)
    models do beyond the convolutions by design."""
    layers: list[nn.Module] = []
    for module in exported:
        if isinstance(module, nn.Conv2d):
            layers.append(
                nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, padding=module.padding)
            )
        elif isinstance(module, nn.BatchNorm2d):  # what escnn's batch norms export to
            layers.append(nn.BatchNorm2d(module.num_features))
        elif isinstance(module, FourierActivation) and fourier:
            layers.append(copy.deepcopy(module))
        elif isinstance(module, (nn.ReLU, FourierActivation)):
            layers.append(nn.ReLU(inplace=True))
        elif isinstance(module, BlurPool):
            layers.append(copy.deepcopy(module))
    return nn.Sequential(*layers)


def compare_with_plain(
    config: str, device: torch.device, sizes: Sizes, batch_size: int = 128
) -> dict[str, float]:
    import yaml

    x = torch.rand(batch_size, 1, 32, 32, device=device)
    y = torch.randint(0, 8, (batch_size,), device=device)
    spec = yaml.safe_load((ROOT / "configs" / "backbone" / f"{config}.yaml").read_text())
    backbone = EquivariantCNN(1, **spec["model"]["backbone"]["init_args"])
    exported = backbone.export()
    twin = plain_twin(exported)
    with torch.no_grad():
        twin_channels = twin(x[:1].cpu()).shape[1]
    nets = {
        "escnn": nn.Sequential(backbone, ClassificationHead(backbone.out_channels, 8)).to(device),
        "exported": nn.Sequential(exported, ClassificationHead(backbone.out_channels, 8)).to(device),
        "plain": nn.Sequential(twin, ClassificationHead(twin_channels, 8)).to(device),
    }
    fourier = any(isinstance(module, FourierActivation) for module in exported)
    if fourier:
        nets["plain_fourier"] = nn.Sequential(
            plain_twin(exported, fourier=True), ClassificationHead(twin_channels, 8)
        )
        nets["plain_fourier"].to(device)
    optimizers = {name: torch.optim.AdamW(net.parameters()) for name, net in nets.items()}
    train_s: dict[str, list[float]] = {
        name: [] for name in ("escnn", "plain", "plain_fourier") if name in nets
    }
    infer_s: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(sizes.rounds + 1):  # the first round warms up
        for name in train_s:
            net, optimizer = nets[name].train(), optimizers[name]
            train_s[name].append(
                repeat(lambda n=net, o=optimizer: train_step(n, o, x, y), sizes.steps, device)
            )
        for name, net in nets.items():
            net.eval()  # escnn expands and caches its filters here, outside the timing
            with torch.no_grad():
                infer_s[name].append(repeat(lambda n=net: n(x), sizes.steps, device))
    train = {name: median(times[1:]) for name, times in train_s.items()}
    infer = {name: median(times[1:]) for name, times in infer_s.items()}
    ratios = {
        "train_ratio": train["escnn"] / train["plain"],
        "eval_infer_ratio": infer["escnn"] / infer["plain"],
        "export_infer_ratio": infer["exported"] / infer["plain"],
        "plain_train_images_per_s": sizes.steps * batch_size / train["plain"],
    }
    if fourier:  # the same ratios against the twin that has the Fourier nonlinearity too
        ratios["fourier_train_ratio"] = train["escnn"] / train["plain_fourier"]
        ratios["fourier_eval_infer_ratio"] = infer["escnn"] / infer["plain_fourier"]
        ratios["fourier_export_infer_ratio"] = infer["exported"] / infer["plain_fourier"]
    return ratios


def escnn_layers(device: torch.device, sizes: Sizes, batch_size: int = 128) -> dict[str, Any]:
    rows = {config: compare_with_plain(config, device, sizes, batch_size) for config in sizes.escnn_configs}
    first = rows[sizes.escnn_configs[0]]
    return {
        "escnn": rows,
        "escnn_train_ratio": first["train_ratio"],
        "escnn_eval_infer_ratio": first["eval_infer_ratio"],
        "escnn_export_infer_ratio": first["export_infer_ratio"],
    }


# --- 9: the literature's backbones ---

RESNET_CONFIGS = ("resnet18", "timm_resnet18")


def resnet_overhead(root: Path, accelerator: str, device: torch.device, sizes: Sizes) -> dict[str, Any]:
    """symtrain's fit of each ResNet-18 config against the hand-written loop over the network
    symtrain built (same weights at the start, data, batch size, optimiser and schedule)."""
    small = Sizes(**{**sizes.__dict__, "num_train": sizes.resnet_train})
    rows = {}
    for config in RESNET_CONFIGS:
        args = ("--config", str(ROOT / "configs" / "backbone" / f"{config}.yaml"), "--metrics.families=[]")
        # only the training window is timed: a small validation split and no measurements
        args += ("--data.init_args.batch_size", str(sizes.resnet_batch), "--data.init_args.num_val", "64")
        rounds = interleaved_rounds(root, accelerator, device, small, *args)
        rows[config] = {
            "framework_overhead_ratio": median(rounds["symtrain"]) / median(rounds["hand"]),
            "symtrain_images_per_s": median(rounds["symtrain"]),
            "parameters": sum(p.numel() for p in rounds["fit"]["net"].parameters()),
        }
    return {"resnet": rows}


def wide_resnet_rows(device: torch.device, sizes: Sizes) -> dict[str, Any]:
    """The e2-WRN D8D4D1 against the plain network with its expanded convolutions: its own
    export (plain Conv2d, BatchNorm2d, ReLU in the same wide blocks) with fresh weights."""
    from symtrain.backbones import EquivariantWideResNet

    depth, widen, batch_size = sizes.wrn
    x = torch.rand(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    backbone = EquivariantWideResNet(3, depth=depth, widen=widen, group="D", order=8, restrict=[4, 1])
    exported = backbone.export()
    plain = copy.deepcopy(exported)
    for module in plain.modules():  # the twin learns its own weights, as a plain WRN would
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    channels = backbone.out_channels
    nets = {
        "escnn": nn.Sequential(backbone, ClassificationHead(channels, 10)).to(device),
        "exported": nn.Sequential(exported, ClassificationHead(channels, 10)).to(device),
        "plain": nn.Sequential(plain.train(), ClassificationHead(channels, 10)).to(device),
    }
    optimizers = {name: torch.optim.AdamW(net.parameters()) for name, net in nets.items()}
    train_s: dict[str, list[float]] = {"escnn": [], "plain": []}
    infer_s: dict[str, list[float]] = {name: [] for name in nets}
    steps = max(1, sizes.steps // 4)  # a WRN step is 10-100x a quickstart step
    for _ in range(sizes.rounds + 1):  # the first round warms up
        for name in train_s:
            net, optimizer = nets[name].train(), optimizers[name]
            train_s[name].append(repeat(lambda n=net, o=optimizer: train_step(n, o, x, y), steps, device))
        for name, net in nets.items():
            net.eval()  # escnn expands and caches its filters here, outside the timing
            with torch.no_grad():
                infer_s[name].append(repeat(lambda n=net: n(x), steps, device))
    train = {name: median(times[1:]) for name, times in train_s.items()}
    infer = {name: median(times[1:]) for name, times in infer_s.items()}
    return {
        "wide_resnet": {
            "model": f"{backbone.name} WRN-{depth}-{widen}, batch {batch_size}",
            "parameters": sum(p.numel() for p in backbone.parameters()),
            "train_ratio": train["escnn"] / train["plain"],
            "eval_infer_ratio": infer["escnn"] / infer["plain"],
            "export_infer_ratio": infer["exported"] / infer["plain"],
        }
    }


# --- 5: start-up ---


def wall(command: list[str], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return median(times)


def startup(root: Path, accelerator: str, sizes: Sizes) -> dict[str, float]:
    env_python = [sys.executable]
    first_step = [
        *env_python, "-m", "symtrain", "fit", "--config", "configs/quickstart.yaml",
        "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.accelerator", accelerator,
        "--trainer.default_root_dir", str(root), "--metrics.families", "[]", "--run.test_after_fit", "false",
        "--run.wandb", "false", "--run.quiet", "true",
    ]  # fmt: skip
    return {
        "startup_help_s": wall([*env_python, "-m", "symtrain", "--help"], sizes.startup_rounds),
        "startup_fit_help_s": wall([*env_python, "-m", "symtrain", "fit", "--help"], sizes.startup_rounds),
        "import_lightning_s": wall([*env_python, "-c", "import lightning.pytorch"], sizes.startup_rounds),
        "first_step_fit_s": wall(first_step, sizes.startup_rounds),
    }


# --- 6: scaling ---


def peak_memory(device: torch.device) -> float:
    """Peak bytes: allocated on the GPU since the last reset, or the process's resident peak."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def scaling(root: Path, accelerator: str, device: torch.device, sizes: Sizes) -> dict[str, Any]:
    rows = []
    base_n, base_size = sizes.scaling_train[0], sizes.scaling_image[0]
    configs = [(n, base_size) for n in sizes.scaling_train] + [(base_n, s) for s in sizes.scaling_image[1:]]
    for num_train, image_size in configs:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        run_sizes = Sizes(**{**sizes.__dict__, "num_train": num_train})
        fit = fit_round(root, accelerator, run_sizes, "--data.init_args.image_size", str(image_size),
                        "--metrics.families", "[]")  # fmt: skip
        rows.append({"num_train": num_train, "image_size": image_size, "epoch_s": fit["epoch_s"],
                     "peak_memory_mb": fit["peak_memory"] / 2**20})  # fmt: skip
    base = rows[0]
    for row in rows:
        work = (row["num_train"] / base["num_train"]) * (row["image_size"] / base["image_size"]) ** 2
        row["time_per_work_vs_first"] = row["epoch_s"] / base["epoch_s"] / work
    return {"scaling": rows}


# --- 7: what a fit costs beyond training ---

COST_PARTS = ("startup", "sanity", "train", "validate", "measure_val", "measure_test", "test")


def fit_cost(root: Path, accelerator: str, sizes: Sizes) -> dict[str, Any]:
    """A default fit on real digits, timed from outside, split by the run's own summary."""
    command = [
        sys.executable, "-m", "symtrain", "fit", "--config", "configs/quickstart.yaml",
        "--config", "configs/data/mnist5k.yaml", *sizes.cost_flags, "--trainer.accelerator", accelerator,
        "--trainer.default_root_dir", str(root / "cost"), "--run.name", "cost", "--run.quiet", "true",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline"}  # the default for a user who is not logged in
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, env=env)
    total = time.perf_counter() - start
    seconds = json.loads((root / "cost" / "cost" / "summary.json").read_text())["seconds"]
    parts = {part: seconds.get(part, 0.0) for part in COST_PARTS}
    flags = list(sizes.cost_flags)
    epochs = int(flags[flags.index("--trainer.max_epochs") + 1])
    return {"fit_cost": {"total": total, **parts, "other": total - sum(parts.values()), "epochs": epochs}}


def compare_startup(root: Path, sizes: Sizes) -> dict[str, float]:
    """Start-up of each cell of a study of up to two cells (one per round): forked from the
    import server, and fresh."""
    startups = {}
    strategies = {"none": "configs/symmetry/none.yaml", "flip": "configs/symmetry/augment_flip.yaml"}
    strategies = dict(list(strategies.items())[: sizes.rounds])  # --tiny: one cell of each kind
    for fork in (True, False):
        study = {
            "name": f"fork_{fork}".lower(),
            "base": ["configs/quickstart.yaml", "configs/trainer/debug.yaml"],
            "backbones": {"cnn": "configs/backbone/cnn.yaml"},
            "strategies": strategies,
            # start-up is what is timed: no measurements, no test after the fit
            "args": [
                "--data.init_args.num_train=64",
                "--metrics.families=[]",
                "--run.test_after_fit=false",
                "--run.wandb=false",
                "--run.quiet=true",
            ],
            "root": str(root / "compare"),
            "fork": fork,
        }
        path = root / f"{study['name']}.yaml"
        path.write_text(json.dumps(study))
        command = [sys.executable, "-m", "symtrain", "compare", "--config", str(path)]
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        cells = sorted((root / "compare" / study["name"]).glob("*/summary.json"))
        startups[fork] = [json.loads(cell.read_text())["seconds"]["startup"] for cell in cells]
    return {
        "compare_cell_startup_forked_s": median(startups[True]),
        "compare_cell_startup_fresh_s": median(startups[False]),
    }


# --- 10: data on disk ---


def digits_photos(
    root: Path, num_train: int, scale: tuple[float, float], held_out: int = 100, jpeg_only: bool = False
) -> Path:
    """A folder of the real digits as image files of every size, format and mode
    (:func:`symtrain.data.photos.write_photo_folder`): ``num_train`` training files (the
    training digits written as often as needed, each time at other sizes) and ``held_out``
    validation and test files."""
    from symtrain.data import MNIST5k
    from symtrain.data.photos import KINDS, write_photo_folder

    kinds = [kind for kind in KINDS if kind[0] == "JPEG"] if jpeg_only else KINDS
    digits = MNIST5k(root=str(ROOT / "data"))
    digits.setup()
    train = digits.splits["train"]
    written, copy = 0, 0
    while written < num_train:
        count = min(len(train), num_train - written)
        part = {"train": (train.images[:count], train.labels[:count])}
        if copy == 0:
            for name in ("val", "test"):
                part[name] = (digits.splits[name].images[:held_out], digits.splits[name].labels[:held_out])
        write_photo_folder(root, part, digits.class_names, copy, scale, prefix=f"c{copy}-", kinds=kinds)
        written, copy = written + count, copy + 1
    return root


def tree_pss(pid: int) -> int:
    """Bytes of memory the process ``pid`` and its descendants hold, each shared page counted
    once among those sharing it (the proportional set size; RSS would count the forked loader
    workers' shared pages once per worker)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:  # it ended meanwhile
            continue
        pending.extend(int(child) for child in children)
    return total


def peak_tree_memory(command: list[str], interval: float = 0.05) -> tuple[float, float]:
    """Run ``command``; return its wall time and the peak of its process tree's memory."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_pss(process.pid))
        time.sleep(interval)
    if process.returncode != 0:
        raise RuntimeError(process.stderr.read().decode()[-2000:])
    return time.perf_counter() - start, float(peak)


def streaming_memory(root: Path, sizes: Sizes) -> dict[str, Any]:
    """Peak memory of a one-epoch streaming fit on the small and the large folder (every image
    decoded in the loader's workers, two of them), and of the same fits held in memory."""
    rows = []
    for num_train in sizes.stream_train:
        folder = digits_photos(root / f"photos{num_train}", num_train, scale=(1.0, 2.5))
        for storage in ("stream", "memory"):
            command = [
                sys.executable, "-m", "symtrain", "fit", "--config", "configs/quickstart.yaml",
                "--data", "ImageFolder", "--data.root", str(folder), "--data.image_size", "32",
                "--data.channels", "1", "--data.storage", storage, "--data.num_workers", "2",
                "--model.backbone.width", "8", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
                "--trainer.default_root_dir", str(root / "runs"), "--metrics.families", "[]",
                "--run.test_after_fit", "false", "--run.wandb", "false", "--run.quiet", "true",
            ]  # fmt: skip
            seconds, peak = peak_tree_memory(command)
            rows.append(
                {"num_train": num_train, "storage": storage, "fit_s": seconds, "peak_mb": peak / 2**20}
            )
    return {"streaming_memory": rows}


def loader_throughput(root: Path, sizes: Sizes) -> dict[str, Any]:
    """Images/s of symtrain's streaming loader (ImageFolder, storage stream) over photo-sized
    JPEGs (RGB, gray, CMYK, EXIF-rotated, as ImageNet's are) against the loop anyone would write
    with torchvision (its ImageFolder, v2 resize and centre crop, a DataLoader with the same
    workers and batch size), once with torchvision.io's JPEG decoding (symtrain's: the same
    decode) and once with its default PIL loader; interleaved rounds, medians."""
    import torchvision
    from torchvision.transforms import v2

    from symtrain.data import ImageFolder

    folder = digits_photos(root / "large_photos", sizes.photo_train, (8.0, 14.0), 10, jpeg_only=True)
    size, workers, batch_size = 64, 2, 64
    data = ImageFolder(
        str(folder), image_size=size, channels=3, storage="stream", num_workers=workers,
        batch_size=batch_size, mean=[0.5] * 3, std=[0.25] * 3, val_fraction=0.0,
    )  # fmt: skip
    data.setup()
    resize = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    train = str(folder / "train")
    references = {
        "torchvision_io": torchvision.datasets.ImageFolder(train, transform=resize, loader=_torchvision_jpeg),
        "torchvision_pil": torchvision.datasets.ImageFolder(
            train, transform=v2.Compose([v2.PILToTensor(), resize])
        ),
    }
    loaders = {"symtrain": data.train_dataloader()}
    for name, dataset in references.items():
        loaders[name] = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=True
        )
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(sizes.rounds + 1):  # the first round starts the workers: not counted
        for name, loader in loaders.items():
            start, count = time.perf_counter(), 0
            for batch in loader:
                count += len(batch[1])
            rates[name].append(count / (time.perf_counter() - start))
    rate = {name: median(values[1:]) for name, values in rates.items()}
    return {
        "stream_images_per_s": rate["symtrain"],
        "torchvision_io_folder_images_per_s": rate["torchvision_io"],
        "torchvision_pil_folder_images_per_s": rate["torchvision_pil"],
        "stream_over_torchvision": rate["symtrain"] / rate["torchvision_io"],
        "stream_over_torchvision_pil": rate["symtrain"] / rate["torchvision_pil"],
        "photo_files": len(references["torchvision_io"]),
    }


def _torchvision_jpeg(path: str) -> Tensor:
    """torchvision.io's JPEG decoding, upright, RGB: what symtrain decodes JPEGs with."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    return decode_jpeg(read_file(path), mode=ImageReadMode.RGB, apply_exif_orientation=True)


class _PerImage(torch.utils.data.Dataset):
    """In-memory images through a per-image transform (what loader workers would run)."""

    def __init__(self, images: Tensor, transform: Callable[[Tensor], Tensor]) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.transform(self.images[index])


def base_pipeline_placement(sizes: Sizes, batch_size: int = 128, workers: int = 2) -> dict[str, Any]:
    """The base training pipeline (pad_crop + flip) on data held in memory: kornia over whole
    batches where they lie (symtrain's choice) against torchvision v2 per image in loader
    workers; images/s."""
    from symtrain.data import SyntheticShapes
    from symtrain.data.images import BasePipeline

    data = SyntheticShapes(num_train=sizes.num_train)
    data.setup()
    images = data.splits["train"].images  # uint8 (N, 1, 32, 32)
    pipeline = BasePipeline("pad_crop", flip=True)
    batched = pipeline.batch_transform()
    per_image = pipeline.image_transform(images.shape[-1], train=True, resize=False)
    loader = torch.utils.data.DataLoader(
        _PerImage(images, per_image), batch_size=batch_size, num_workers=workers, persistent_workers=True
    )
    device_rates, worker_rates = [], []
    for _ in range(sizes.rounds):
        start = time.perf_counter()
        for first in range(0, len(images), batch_size):
            batched(images[first : first + batch_size])
        device_rates.append(len(images) / (time.perf_counter() - start))
        start = time.perf_counter()
        for _batch in loader:
            pass
        worker_rates.append(len(images) / (time.perf_counter() - start))
    return {
        "base_pipeline_batched_images_per_s": median(device_rates),
        "base_pipeline_workers_images_per_s": median(worker_rates),
    }


def in_memory_loading(sizes: Sizes) -> dict[str, Any]:
    """The in-memory fast path (the quickstart's shapes, the real digits): an epoch of its
    training loader against an epoch of training steps, and against cutting the same batches
    from the tensors by hand."""
    from symtrain.data import MNIST5k, SyntheticShapes

    rows = {}
    for name, data in (
        ("shapes", SyntheticShapes(num_train=sizes.num_train)),
        ("digits", MNIST5k(root=str(ROOT / "data"))),
    ):
        data.setup()
        split = data.splits["train"]
        net = SymmetryModule(
            partial(StandardCNN, width=16, depth=3), num_classes=data.num_classes,
            in_channels=data.in_channels,
        ).net  # fmt: skip
        optimizer = torch.optim.AdamW(net.parameters())
        loader_s, hand_s, step_s = [], [], []
        for _ in range(sizes.rounds):
            start = time.perf_counter()
            batches = list(data.train_dataloader())
            loader_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            order = torch.randperm(len(split))
            cuts = [order[i : i + data.batch_size] for i in range(0, len(split), data.batch_size)]
            by_hand = [(split.images[cut], split.labels[cut]) for cut in cuts]
            hand_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            for images, labels in by_hand[: sizes.steps]:
                train_step(net, optimizer, images.float().div_(255), labels)
            step_s.append((time.perf_counter() - start) / min(sizes.steps, len(by_hand)) * len(batches))
        rows[name] = {
            "loader_epoch_s": median(loader_s),
            "by_hand_epoch_s": median(hand_s),
            "loader_share_of_training_epoch": median(loader_s) / median(step_s),
        }
    return {"in_memory_loading": rows}


# --- the report ---


def status(value: float, target: float, higher_is_better: bool) -> str:
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "NOT met"


def report(results: dict[str, Any]) -> str:
    device_type = results["device"]
    aug_target = 0.10 if device_type == "cuda" else 0.20
    extra = f"; fit args: {results['fit_args']}" if results.get("fit_args") else ""
    setting = f"{results['mode']}; torch {results['torch']}{extra}"
    lines = [
        f"symtrain benchmark on {results['device_name']} ({setting})",
        "",
        "| measure | value | target | |",
        "|---|---:|---:|---|",
    ]

    def row(name: str, value: float, target: float, higher: bool, fmt: str = "{:.3f}") -> None:
        comparison = ">=" if higher else "<="
        met = status(value, target, higher)
        lines.append(f"| {name} | {fmt.format(value)} | {comparison} {target} | {met} |")

    def info(name: str, value: float, fmt: str = "{:.3f}") -> None:
        lines.append(f"| {name} | {fmt.format(value)} | | |")

    if "framework_overhead_ratio" in results:
        overhead = results["framework_overhead_ratio"]
        row("framework overhead: symtrain img/s / hand-written loop img/s", overhead, 0.95, True)
        row(
            "framework overhead, SGD + MultiStepLR recipe: symtrain img/s / hand-written loop img/s",
            results["sgd_framework_overhead_ratio"],
            0.95,
            True,
        )
        share = results["metrics_epoch_share"]
        row("metrics: callback time per epoch (every 2nd epoch) / training epoch", share, 0.10, False)
        info("metrics: one measurement / training epoch", results["metrics_measurement_share"])
        row(
            "measure: symtrain.measure img/s, streamed uint8 batches / the callback's pass, in memory",
            results["measure_over_callback"],
            0.95,
            True,
        )
        for measure, share in results["measure_epoch_share"].items():
            alone = "" if "together" in measure else " alone"
            info(f"metrics: {measure}{alone} / training epoch", share)
    for family, share in results.get("augmentation_step_share", {}).items():
        row(f"augmentation {family}: share of a training step", share, aug_target, False)
    if "kornia_over_torchvision" in results:
        info(
            "rotation: batched kornia / per-sample torchvision v2 in workers (img/s)",
            results["kornia_over_torchvision"],
            "{:.2f}",
        )
    for name, values in results.get("strategy_cost", {}).items():
        if name.startswith("canonicalize"):
            row(f"{name}: train step / plain network", values["train_ratio"], 1.3, False)
        else:  # |G| (or `samples`) passes of the network per averaged pass, by design
            info(f"{name}: train step / plain network", values["train_ratio"], "{:.2f}")
        info(f"{name}: inference / plain network", values["infer_ratio"], "{:.2f}")
    for config, values in results.get("escnn", {}).items():
        row(f"{config}: train step / plain CNN with the same convs", values["train_ratio"], 1.3, False)
        row(f"{config}: eval-mode inference / plain CNN", values["eval_infer_ratio"], 1.05, False)
        row(f"{config}: exported inference / plain CNN", values["export_infer_ratio"], 1.05, False)
        if "fourier_train_ratio" in values:
            twin = "plain CNN with the same Fourier nonlinearity"
            info(f"{config}: train step / {twin}", values["fourier_train_ratio"])
            info(f"{config}: eval-mode inference / {twin}", values["fourier_eval_infer_ratio"])
            info(f"{config}: exported inference / {twin}", values["fourier_export_infer_ratio"])
    for config, values in results.get("resnet", {}).items():
        overhead = values["framework_overhead_ratio"]
        row(f"{config}: symtrain img/s / hand-written loop img/s", overhead, 0.95, True)
    if "wide_resnet" in results:
        wrn = results["wide_resnet"]
        row(f"{wrn['model']}: train step / plain WRN with the same convs", wrn["train_ratio"], 1.3, False)
        info(f"{wrn['model']}: eval-mode inference (escnn modules) / plain WRN", wrn["eval_infer_ratio"])
        row(f"{wrn['model']}: exported inference / plain WRN", wrn["export_infer_ratio"], 1.05, False)
    if "startup_help_s" in results:
        row("start-up: `python -m symtrain --help` (s)", results["startup_help_s"], 2.0, False, "{:.2f}")
        fit_help = results["startup_fit_help_s"]
        info("`python -m symtrain fit --help`: LightningCLI's full parser (s)", fit_help, "{:.2f}")
        info("(its floor) `import lightning.pytorch` alone (s)", results["import_lightning_s"], "{:.2f}")
        info("one-step quickstart fit, process start to exit (s)", results["first_step_fit_s"], "{:.2f}")
    if "fit_cost" in results:
        cost = results["fit_cost"]
        epoch = cost["train"] / cost["epochs"]
        row("real-digit fit: test-time equivariance measurements / one training epoch",
            cost["measure_test"] / epoch, 2.0, False)  # fmt: skip
        info("real-digit fit: measurements during fit (every 2nd epoch on 64 val images) / one epoch",
             cost["measure_val"] / epoch)  # fmt: skip
        loop = (cost["train"] + cost["validate"] + cost["sanity"]) / cost["total"]
        info("real-digit fit: training loop (train + validation) / wall time, start to exit", loop)
        info("real-digit fit: training epochs alone / wall time", cost["train"] / cost["total"])
        forked, fresh = results["compare_cell_startup_forked_s"], results["compare_cell_startup_fresh_s"]
        info("compare: start-up of a cell forked from the import server (s)", forked, "{:.2f}")
        info("compare: start-up of a cell in a new interpreter (s)", fresh, "{:.2f}")
    if "stream_over_torchvision" in results:
        files = results["photo_files"]
        ratio = results["stream_over_torchvision"]
        same = f"streaming loader img/s / torchvision ImageFolder + DataLoader, same decode ({files} JPEGs)"
        row(same, ratio, 0.95, True)
        pil = "streaming loader img/s / torchvision ImageFolder with its default PIL loader"
        info(pil, results["stream_over_torchvision_pil"], "{:.2f}")
    if "streaming_memory" in results:
        peaks = {(r["storage"], r["num_train"]): r["peak_mb"] for r in results["streaming_memory"]}
        small, large = sorted({r["num_train"] for r in results["streaming_memory"]})
        growth = peaks["stream", large] - peaks["stream", small]
        row(
            f"streaming fit: peak memory at {large:,} images - at {small:,} (MB)",
            growth,
            200,
            False,
            "{:.0f}",
        )
        info(f"in-memory fit: peak memory at {large:,} images - at {small:,} (MB)",
             peaks["memory", large] - peaks["memory", small], "{:.0f}")  # fmt: skip
    for name, values in results.get("in_memory_loading", {}).items():
        share = values["loader_share_of_training_epoch"]
        row(f"in-memory loader ({name}): epoch of batches / epoch of training steps", share, 0.02, False)
        info(f"in-memory loader ({name}): epoch of batches / the same batches cut by hand",
             values["loader_epoch_s"] / values["by_hand_epoch_s"], "{:.2f}")  # fmt: skip
    lines.append("")
    if "fit_cost" in results:
        cost = results["fit_cost"]
        shares = ", ".join(
            f"{part} {cost[part]:.1f} s ({cost[part] / cost['total']:.0%})" for part in (*COST_PARTS, "other")
        )
        lines.append(f"real-digit fit, {cost['total']:.1f} s in all: {shares}")
    if "symtrain_images_per_s" in results:
        lines.append(
            f"training: symtrain {results['symtrain_images_per_s']:,.0f} img/s, hand-written "
            f"{results['hand_written_images_per_s']:,.0f} img/s; epoch {results['train_epoch_s']:.2f} s"
        )
    if "kornia_rotation_images_per_s" in results:
        kornia_rate = results["kornia_rotation_images_per_s"]
        workers_rate = results["torchvision_workers_rotation_images_per_s"]
        rates = f"kornia {kornia_rate:,.0f} img/s, torchvision workers {workers_rate:,.0f} img/s"
        lines.append(f"rotation augmentation: {rates}")
    if "streaming_memory" in results:
        lines += ["", "| training files | storage | fit (s) | peak memory, process and workers (MiB) |",
                  "|---:|---|---:|---:|"]  # fmt: skip
        for r in results["streaming_memory"]:
            lines.append(f"| {r['num_train']:,} | {r['storage']} | {r['fit_s']:.1f} | {r['peak_mb']:.0f} |")
    if "base_pipeline_batched_images_per_s" in results:
        batched, workers = (
            results["base_pipeline_batched_images_per_s"],
            results["base_pipeline_workers_images_per_s"],
        )
        lines.append(
            f"base pipeline (pad_crop + flip) on data in memory: batched kornia {batched:,.0f} img/s, "
            f"torchvision per image in 2 workers {workers:,.0f} img/s"
        )
    if "stream_images_per_s" in results:
        lines.append(
            f"photo loading: symtrain streaming {results['stream_images_per_s']:,.0f} img/s, torchvision "
            f"ImageFolder {results['torchvision_io_folder_images_per_s']:,.0f} img/s (torchvision.io), "
            f"{results['torchvision_pil_folder_images_per_s']:,.0f} img/s (PIL)"
        )
    if "scaling" in results:
        lines += [
            "",
            "| train images | image size | epoch (s) | time per image-pixel vs first | peak memory (MiB) |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in results["scaling"]:
            cells = (
                r["num_train"],
                r["image_size"],
                f"{r['epoch_s']:.2f}",
                f"{r['time_per_work_vs_first']:.2f}",
            )
            lines.append(f"| {' | '.join(map(str, cells))} | {r['peak_memory_mb']:.0f} |")
    return "\n".join(lines)


SECTIONS = (
    "overhead", "augmentation", "strategies", "escnn", "startup", "scaling", "cost", "backbones", "data"
)  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (under two minutes on a CPU)")
    parser.add_argument("--tiny", action="store_true", help="smallest sizes: only checks that it runs")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--escnn", nargs="+", help="backbone configs of the escnn section (default per size)")
    parser.add_argument(
        "--fit-args",
        default="",
        help="extra symtrain flags for the overhead section's fits, e.g. '--model.channels_last true' "
        "(the hand-written loop stays plain fp32, so the ratio shows what the option gains)",
    )
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # the CLI instances below get their arguments from `args=`
    sizes = TINY if args.tiny else QUICK if args.quick else FULL
    if args.escnn:
        sizes = Sizes(**{**sizes.__dict__, "escnn_configs": tuple(args.escnn)})
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    results: dict[str, Any] = {
        "mode": "tiny" if args.tiny else "quick" if args.quick else "full",
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    step_batch = 16 if args.tiny else 128  # the batch of the step-level rows (strategies, escnn)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "overhead" in args.sections:
            results["fit_args"] = args.fit_args
            results.update(overhead_and_metrics(root, accelerator, device, sizes, *args.fit_args.split()))
        if "augmentation" in args.sections:
            results.update(augmentation(root, device, sizes))
        if "strategies" in args.sections:
            results.update(strategies(root, device, sizes, batch_size=step_batch))
        if "escnn" in args.sections:
            results.update(escnn_layers(device, sizes, batch_size=step_batch))
        if "startup" in args.sections:
            results.update(startup(root, accelerator, sizes))
        if "scaling" in args.sections:
            results.update(scaling(root, accelerator, device, sizes))
        if "cost" in args.sections:
            results.update(fit_cost(root, accelerator, sizes))
            results.update(compare_startup(root, sizes))
        if "backbones" in args.sections:
            results.update(resnet_overhead(root, accelerator, device, sizes))
            results.update(wide_resnet_rows(device, sizes))
        if "data" in args.sections:
            results.update(streaming_memory(root, sizes))
            results.update(loader_throughput(root, sizes))
            results.update(in_memory_loading(sizes))
            results.update(base_pipeline_placement(sizes))
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
