"""Continuous rotations about the image centre, measured on the inscribed disk."""

from __future__ import annotations

import math

import torch
from kornia.geometry.transform import rotate
from torch import Tensor

from symtrain.transforms.base import Device, TransformFamily


class Rotation(TransformFamily):
    """Continuous rotations about the image centre (SO(2)), bilinear, zero fill.

    Interpolated: only multiples of 90 degrees are exact on a pixel grid, so measurements
    take place on the inscribed disk (``frame = "disk"``), where a rotation only interpolates.
    Element: the angle in degrees, counter-clockwise. The test elements are spread over
    [-d, d], a quarter of the range apart, offset by the golden ratio of a step:
    -d + (k + 0.618) d / 2, k = 0..3 (-124.4, -34.4, 55.6 and 145.6 degrees for the full circle),
    each then moved, where needed, to the nearest angle in range that is at least
    min(10, d / 2) degrees from every multiple of 22.5 degrees: the elements of C4, C8 and C16
    (the groups the shipped escnn configs build in), so no such model is flattered by meeting
    its own elements (C8 is exactly invariant at 45 degrees, and only there), and the identity,
    so no element is a near-identity that any model passes (for d = 15: -10.4, -7.5, 7.5, 12.1).

    Args:
        degrees: angles are drawn uniformly from [-degrees, degrees]; 180 covers the circle.
    """

    name = "rotation"
    exact = False
    frame = "disk"

    def __init__(self, degrees: float = 180.0) -> None:
        self.degrees = degrees

    def sample(self, n: int, generator: torch.Generator | None = None, device: Device = None) -> Tensor:
        return (torch.rand(n, 1, generator=generator, device=device) * 2 - 1) * self.degrees

    def test_elements(self) -> Tensor:
        golden = (math.sqrt(5) - 1) / 2  # 0.618...
        spread = -self.degrees + (torch.arange(4.0, dtype=torch.float64) + golden) * self.degrees / 2
        margin = min(10.0, self.degrees / 2)

        def clear(angles: Tensor) -> Tensor:  # far enough from every multiple of 22.5 degrees
            offset = torch.remainder(angles, 22.5)
            return torch.minimum(offset, 22.5 - offset) >= margin - 1e-9

        # Where an element is too near, the nearest clear angle on a 0.01 degree grid of the range.
        grid = torch.linspace(-self.degrees, self.degrees, round(200 * self.degrees) + 1, dtype=torch.float64)
        admissible = grid[clear(grid)]
        nearest = admissible[(spread[:, None] - admissible[None]).abs().argmin(dim=1)]
        return torch.where(clear(spread), spread, nearest)[:, None].float()

    def inverse(self, elements: Tensor) -> Tensor:
        return -elements

    def apply(self, images: Tensor, elements: Tensor, mode: str = "bilinear") -> Tensor:
        return rotate(images, elements[:, 0].to(images), mode=mode, align_corners=True)
