"""Equivariant layers: an escnn model's training step against a plain CNN with the same
expanded convolution shapes (target <= 1.3x), and its eval-mode and exported inference (target
<= 1.05x); for Fourier-field models (SO(2), O(2)) also against a plain CNN that has their
nonlinearity, the work they do beyond the convolutions by design. ``--escnn`` names the
backbone configs (configs/backbone/) to compare; the first one's ratios are also reported alone.
"""

from __future__ import annotations

import copy
from statistics import median
from typing import Any

import torch
import yaml
from torch import nn

from scripts.benchmark import ROOT
from scripts.benchmark.fits import train_step
from scripts.benchmark.section import Bench, Section
from scripts.benchmark.sizes import Sizes
from scripts.benchmark.table import Table
from scripts.benchmark.timing import repeat
from symtrain.backbones import EquivariantCNN
from symtrain.backbones.equivariant import BlurPool, FourierActivation
from symtrain.module import ClassificationHead


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


def run(bench: Bench) -> dict[str, Any]:
    return escnn_layers(bench.device, bench.sizes, batch_size=bench.step_batch)


def rows(table: Table, results: dict[str, Any]) -> None:
    for config, values in results.get("escnn", {}).items():
        table.row(f"{config}: train step / plain CNN with the same convs", values["train_ratio"], 1.3, False)
        table.row(f"{config}: eval-mode inference / plain CNN", values["eval_infer_ratio"], 1.05, False)
        table.row(f"{config}: exported inference / plain CNN", values["export_infer_ratio"], 1.05, False)
        if "fourier_train_ratio" in values:
            twin = "plain CNN with the same Fourier nonlinearity"
            table.info(f"{config}: train step / {twin}", values["fourier_train_ratio"])
            table.info(f"{config}: eval-mode inference / {twin}", values["fourier_eval_infer_ratio"])
            table.info(f"{config}: exported inference / {twin}", values["fourier_export_infer_ratio"])


SECTION = Section("escnn", order=40, run=run, rows=rows)
