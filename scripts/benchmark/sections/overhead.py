"""Framework overhead and the metrics' cost.

Framework overhead: training images/s of symtrain's fit (the CLI's trainer, model and data) over
a hand-written PyTorch loop on the same network, data, batch size, optimiser and schedule, with
the default recipe (AdamW + one-cycle) and with the papers' SGD + MultiStepLR
(configs/optim/sgd_multistep.yaml); target >= 0.95 each.

Metrics cost: one run of the equivariance metrics (default settings) as a share of a training
epoch of the quickstart; target <= 0.10. And ``symtrain.measure`` (what ``python -m symtrain
measure`` runs) streaming the test subset from a DataLoader of uint8 batches, against the
callback's pass over the same images held in memory: images/s, target >= 0.95.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from statistics import median
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from scripts.benchmark import ROOT
from scripts.benchmark.fits import interleaved_rounds
from scripts.benchmark.section import Bench, Section
from scripts.benchmark.sizes import Sizes
from scripts.benchmark.table import Table
from scripts.benchmark.timing import synchronize
from symtrain.metrics import EquivarianceMetrics, measures_for
from symtrain.metrics.base import registry

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


def run(bench: Bench) -> dict[str, Any]:
    fit_args = bench.fit_args.split()
    figures = overhead_and_metrics(bench.root, bench.accelerator, bench.device, bench.sizes, *fit_args)
    return {"fit_args": bench.fit_args, **figures}


def rows(table: Table, results: dict[str, Any]) -> None:
    if "framework_overhead_ratio" not in results:
        return
    overhead = results["framework_overhead_ratio"]
    table.row("framework overhead: symtrain img/s / hand-written loop img/s", overhead, 0.95, True)
    table.row(
        "framework overhead, SGD + MultiStepLR recipe: symtrain img/s / hand-written loop img/s",
        results["sgd_framework_overhead_ratio"],
        0.95,
        True,
    )
    share = results["metrics_epoch_share"]
    table.row("metrics: callback time per epoch (every 2nd epoch) / training epoch", share, 0.10, False)
    table.info("metrics: one measurement / training epoch", results["metrics_measurement_share"])
    table.row(
        "measure: symtrain.measure img/s, streamed uint8 batches / the callback's pass, in memory",
        results["measure_over_callback"],
        0.95,
        True,
    )
    for measure, share in results["measure_epoch_share"].items():
        alone = "" if "together" in measure else " alone"
        table.info(f"metrics: {measure}{alone} / training epoch", share)


def notes(results: dict[str, Any]) -> list[str]:
    if "symtrain_images_per_s" not in results:
        return []
    return [
        f"training: symtrain {results['symtrain_images_per_s']:,.0f} img/s, hand-written "
        f"{results['hand_written_images_per_s']:,.0f} img/s; epoch {results['train_epoch_s']:.2f} s"
    ]


SECTION = Section("overhead", order=10, run=run, rows=rows, notes=notes)
