"""Training and inference throughput of every backbone config, side by side in one process.

    python scripts/backbone_speed.py                 # all configs/backbone/*.yaml, CPU
    python scripts/backbone_speed.py --device cuda --batch-size 256 --repeats 7

Rounds are interleaved (every backbone once per round) and the median is reported, so a noisy
shared machine slows all backbones alike; compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

import symtrain.backbones as backbones
from symtrain.module import Normalize, SymmetryNet

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "backbone"


def build(config: Path, in_channels: int, num_classes: int) -> SymmetryNet:
    spec = yaml.safe_load(config.read_text())["model"]["backbone"]
    backbone = getattr(backbones, spec["class_path"].rpartition(".")[2])(
        in_channels, **spec.get("init_args", {})
    )
    return SymmetryNet(Normalize([0.5] * in_channels, [0.25] * in_channels), backbone, num_classes)


def images_per_second(step: Callable[[], None], batch_size: int, steps: int, device: torch.device) -> float:
    step()  # warm-up: escnn expands its filter bases, cuDNN picks algorithms
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 1, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 8, (args.batch_size,), device=device)

    nets = {config.stem: build(config, 1, 8).to(device) for config in sorted(CONFIGS.glob("*.yaml"))}
    train: dict[str, list[float]] = {name: [] for name in nets}
    infer: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(args.repeats):
        for name, net in nets.items():
            optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

            def train_step(net: SymmetryNet = net, optimizer: torch.optim.Optimizer = optimizer) -> None:
                optimizer.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(net(x), y).backward()
                optimizer.step()

            def infer_step(net: SymmetryNet = net) -> None:
                with torch.no_grad():
                    net(x)

            net.train()
            train[name].append(images_per_second(train_step, args.batch_size, args.steps, device))
            net.eval()
            infer[name].append(images_per_second(infer_step, args.batch_size, args.steps, device))

    base_train, base_infer = statistics.median(train["cnn"]), statistics.median(infer["cnn"])
    print("| backbone config | name | params | train img/s | vs cnn | inference img/s | vs cnn |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, net in nets.items():
        params = sum(p.numel() for p in net.parameters())
        tr, inf = statistics.median(train[name]), statistics.median(infer[name])
        print(
            f"| {name} | {net.backbone.name} | {params:,} | {tr:,.0f} | {tr / base_train:.2f} "
            f"| {inf:,.0f} | {inf / base_infer:.2f} |"
        )


if __name__ == "__main__":
    main()
