"""Integer translations with zero fill, measured on a zero-padded canvas."""

from __future__ import annotations

import torch
from kornia.geometry.transform import warp_affine
from torch import Tensor

from symtrain.transforms.base import Device, TransformFamily
from symtrain.transforms.circular_shift import _integer_shifts, _spread_shifts


class Shift(TransformFamily):
    """Integer translations with zero fill: content leaving the frame is lost.

    Element: (dy, dx) in pixels; random elements uniform in [-m, m)^2, test elements the
    quarter turns of (a, b) as for :class:`CircularShift`. Measurements take place on a
    canvas zero-padded by m on every side (``frame = "canvas"``), so that no shift of the
    family moves content out of it and only the model's response is measured.

    Args:
        max_pixels: largest absolute shift along each axis.
    """

    name = "shift"
    exact = False
    frame = "canvas"

    def __init__(self, max_pixels: int = 4) -> None:
        self.max_pixels = max_pixels

    def sample(self, n: int, generator: torch.Generator | None = None, device: Device = None) -> Tensor:
        return _integer_shifts(n, self.max_pixels, generator, device)

    def test_elements(self) -> Tensor:
        return _spread_shifts(self.max_pixels)

    def inverse(self, elements: Tensor) -> Tensor:
        return -elements

    def canvas(self, images: Tensor) -> Tensor:
        return torch.nn.functional.pad(images, [self.max_pixels] * 4)

    def apply(self, images: Tensor, elements: Tensor, mode: str = "bilinear") -> Tensor:
        matrix = torch.zeros(elements.shape[0], 2, 3, dtype=images.dtype, device=images.device)
        matrix[:, 0, 0] = 1.0
        matrix[:, 1, 1] = 1.0
        matrix[:, 0, 2] = elements[:, 1].to(images)
        matrix[:, 1, 2] = elements[:, 0].to(images)
        return warp_affine(images, matrix, images.shape[-2:], mode="nearest", align_corners=True)
