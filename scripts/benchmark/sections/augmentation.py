"""Augmentation cost: each family's on-device kornia augmentation as a share of a training step
(target <= 0.10 on GPU, <= 0.20 on CPU), and batched kornia against a per-sample torchvision v2
pipeline in DataLoader workers."""

from __future__ import annotations

import os
import time
from pathlib import Path
from statistics import median
from typing import Any

import torch
from torch import Tensor

from scripts.benchmark.fits import quickstart_net, train_step
from scripts.benchmark.section import Bench, Section
from scripts.benchmark.sizes import Sizes
from scripts.benchmark.table import Table
from scripts.benchmark.timing import repeat
from symtrain.symmetry import Augmentation
from symtrain.transforms import Affine, Diffeo, Elastic, Flip, Rot90, Rotation, Shift

AUGMENTATION_FAMILIES = {
    "rot90": Rot90,
    "flip": Flip,
    "shift": Shift,
    "rotation": Rotation,
    "affine": Affine,
    "elastic": Elastic,
    "diffeo": Diffeo,
}


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


def run(bench: Bench) -> dict[str, Any]:
    return augmentation(bench.root, bench.device, bench.sizes)


def rows(table: Table, results: dict[str, Any]) -> None:
    target = 0.10 if results["device"] == "cuda" else 0.20
    for family, share in results.get("augmentation_step_share", {}).items():
        table.row(f"augmentation {family}: share of a training step", share, target, False)
    if "kornia_over_torchvision" in results:
        table.info(
            "rotation: batched kornia / per-sample torchvision v2 in workers (img/s)",
            results["kornia_over_torchvision"],
            "{:.2f}",
        )


def notes(results: dict[str, Any]) -> list[str]:
    if "kornia_rotation_images_per_s" not in results:
        return []
    kornia_rate = results["kornia_rotation_images_per_s"]
    workers_rate = results["torchvision_workers_rotation_images_per_s"]
    rates = f"kornia {kornia_rate:,.0f} img/s, torchvision workers {workers_rate:,.0f} img/s"
    return [f"rotation augmentation: {rates}"]


SECTION = Section("augmentation", order=20, run=run, rows=rows, notes=notes)
