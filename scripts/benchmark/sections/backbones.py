"""The literature's backbones: symtrain's fit of ResNet-18 (``configs/backbone/resnet18.yaml``,
timm's blocks, and ``timm_resnet18.yaml``, timm's model) against the hand-written loop over the
same network, data and optimiser (target >= 0.95); the escnn Wide ResNet D8D4D1's training step
against the plain WRN with the same expanded convolutions (its own export, trained as plain
torch; target <= 1.3x), and its eval-mode and exported inference (<= 1.05x)."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from statistics import median
from typing import Any

import torch
from torch import nn

from scripts.benchmark import ROOT
from scripts.benchmark.fits import interleaved_rounds, train_step
from scripts.benchmark.section import Bench, Section
from scripts.benchmark.sizes import Sizes
from scripts.benchmark.table import Table
from scripts.benchmark.timing import repeat
from symtrain.module import ClassificationHead

RESNET_CONFIGS = ("resnet18", "timm_resnet18")


def resnet_overhead(root: Path, accelerator: str, device: torch.device, sizes: Sizes) -> dict[str, Any]:
    """symtrain's fit of each ResNet-18 config against the hand-written loop over the network
    symtrain built (same weights at the start, data, batch size, optimiser and schedule)."""
    small = replace(sizes, num_train=sizes.resnet_train)
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


def run(bench: Bench) -> dict[str, Any]:
    return {
        **resnet_overhead(bench.root, bench.accelerator, bench.device, bench.sizes),
        **wide_resnet_rows(bench.device, bench.sizes),
    }


def rows(table: Table, results: dict[str, Any]) -> None:
    for config, values in results.get("resnet", {}).items():
        overhead = values["framework_overhead_ratio"]
        table.row(f"{config}: symtrain img/s / hand-written loop img/s", overhead, 0.95, True)
    if "wide_resnet" in results:
        wrn = results["wide_resnet"]
        table.row(
            f"{wrn['model']}: train step / plain WRN with the same convs", wrn["train_ratio"], 1.3, False
        )
        table.info(
            f"{wrn['model']}: eval-mode inference (escnn modules) / plain WRN", wrn["eval_infer_ratio"]
        )
        table.row(f"{wrn['model']}: exported inference / plain WRN", wrn["export_infer_ratio"], 1.05, False)


# its rows follow the escnn section's, before the start-up rows
SECTION = Section("backbones", order=80, run=run, rows=rows, rows_order=45)
