"""Symmetry strategies that wrap the network: each one's training step and inference over the
plain quickstart network's (canonicalization: target <= 1.3x for training; group averaging
costs |G| passes of the network by design, reported as measured)."""

from __future__ import annotations

import copy
from pathlib import Path
from statistics import median
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scripts.benchmark.fits import quickstart_net
from scripts.benchmark.section import Bench, Section
from scripts.benchmark.sizes import Sizes
from scripts.benchmark.table import Table
from scripts.benchmark.timing import repeat
from symtrain.symmetry import Canonicalization, GroupAveraging
from symtrain.transforms import Flip, Rot90, Rotation


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


def run(bench: Bench) -> dict[str, Any]:
    return strategies(bench.root, bench.device, bench.sizes, batch_size=bench.step_batch)


def rows(table: Table, results: dict[str, Any]) -> None:
    for name, values in results.get("strategy_cost", {}).items():
        if name.startswith("canonicalize"):
            table.row(f"{name}: train step / plain network", values["train_ratio"], 1.3, False)
        else:  # |G| (or `samples`) passes of the network per averaged pass, by design
            table.info(f"{name}: train step / plain network", values["train_ratio"], "{:.2f}")
        table.info(f"{name}: inference / plain network", values["infer_ratio"], "{:.2f}")


SECTION = Section("strategies", order=30, run=run, rows=rows)
