"""What the metric tests share (``test_metrics*.py``, ``test_stability.py``, ``test_segmentation*.py``):
backbones with known responses, a measurement on one split without a trainer, the splits, small
seeded networks, and an independent warp for derivatives."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor, nn

from symtrain.backbones import AntialiasedCNN, Backbone, EquivariantCNN, StandardCNN
from symtrain.data import Split, SyntheticShapes
from symtrain.metrics import EquivarianceMetrics
from symtrain.metrics.lie import GENERATORS
from symtrain.module import Normalize, SymmetryNet


class GlobalMean(Backbone):
    """The mean intensity and its square: invariant to every exact family, and to shifts on a
    canvas that nothing leaves."""

    out_channels = 2

    def forward(self, images: Tensor) -> Tensor:
        mean = images.mean((1, 2, 3))
        return torch.stack([mean, mean**2], dim=1)[..., None, None]


class Identity(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


def plain_net(backbone: Backbone) -> SymmetryNet:
    net = SymmetryNet(Normalize([0.0], [1.0]), backbone, num_classes=2)
    net.head = Identity()  # logits are the pooled features themselves: responses stay readable
    net.head.forward = lambda features: features.mean((-2, -1))
    return net.eval()


def measure(
    net: nn.Module, split: Split, callback: EquivarianceMetrics, **module: object
) -> dict[str, float]:
    """Run the callback's measurement on one split, with just enough of a trainer and a module
    (``module`` adds attributes, e.g. ``segmentation=True``)."""
    trainer = SimpleNamespace(global_rank=0, world_size=1, datamodule=SimpleNamespace(splits={"test": split}))
    logged: dict[str, float] = {}
    module = SimpleNamespace(
        net=net,
        device=torch.device("cpu"),
        training=False,
        eval=lambda: None,
        train=lambda mode: None,
        log=lambda name, value, **kwargs: logged.setdefault(name, value),
        **module,
    )
    values = callback.measure(trainer, module, "test")
    assert {k: v for k, v in values.items() if "/curve/" not in k} == logged
    return values


def random_split(count: int = 32, size: int = 16, seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    images = (torch.rand(count, 1, size, size, generator=generator) * 255).to(torch.uint8)
    return Split(images, torch.randint(0, 2, (count,), generator=generator))


def shapes_split(count: int = 64, size: int = 32) -> Split:
    data = SyntheticShapes(num_train=1, num_val=1, num_test=count, image_size=size)
    data.setup()
    return data.splits["test"]


def cnn(backbone: Backbone, classes: int = 8) -> SymmetryNet:
    torch.manual_seed(0)
    return SymmetryNet(Normalize([0.1], [0.25]), backbone, classes).eval()


BACKBONES = {
    "cnn": lambda: StandardCNN(1, width=4, depth=2),
    "blur": lambda: AntialiasedCNN(1, width=4, depth=2, downsample="blur"),
    "aps": lambda: AntialiasedCNN(1, width=4, depth=2, downsample="aps"),
    "c4": lambda: EquivariantCNN(1, "C", 4, width=2, depth=2),
    "d4": lambda: EquivariantCNN(1, "D", 4, width=2, depth=2),
    "o2": lambda: EquivariantCNN(1, "O2", 0, width=2, depth=2),
}


def warp(images: Tensor, generator: str, t: float) -> Tensor:
    """The generator's flow for time t, written out independently of the measure: bilinear
    resampling at p − t·v(p), the image mirrored about its border pixels' centres beyond the
    frame, as lie-deriv's warp (first order in t, which a symmetric difference needs)."""
    (a, b), (c, d) = GENERATORS[generator][0]
    bx, by = GENERATORS[generator][1]
    height, width = images.shape[-2:]
    y = torch.arange(height, dtype=images.dtype)[:, None].expand(height, width)
    x = torch.arange(width, dtype=images.dtype)[None, :].expand(height, width)
    cx, cy = x - (width - 1) / 2, y - (height - 1) / 2
    sx = x - t * (a * cx + b * cy + bx)
    sy = y - t * (c * cx + d * cy + by)
    grid = torch.stack([sx / (width - 1) * 2 - 1, sy / (height - 1) * 2 - 1], dim=-1)
    grid = grid.expand(len(images), -1, -1, -1)
    return nn.functional.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=True
    )


class SmoothCNN(Backbone):
    """Convolutions, tanh and average pooling: differentiable everywhere. (Max-pooling is not
    where a window ties, as everywhere in the zeros outside the disk: there a difference
    quotient and the derivative disagree however small the step.)"""

    out_channels = 6

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)


def bordered_images(count: int = 3, size: int = 19) -> Tensor:
    """Smooth images with content up to the frame's edge: a blob on a tilted bright ground."""
    generator = torch.Generator().manual_seed(1)
    y, x = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    images = []
    for _ in range(count):
        cy, cx = (torch.rand(2, generator=generator) * size).tolist()
        tilt = torch.rand(2, generator=generator) - 0.5
        ground = 0.5 + 0.4 * torch.sin((tilt[0] * x + tilt[1] * y) / 3)
        images.append(ground + 0.3 * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 8))
    return torch.stack(images)[:, None].double()
