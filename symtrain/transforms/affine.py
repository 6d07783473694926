"""Random affine maps: rotation, translation, isotropic scale and shear."""

from __future__ import annotations

import math

import torch
from kornia.geometry.transform import warp_affine
from torch import Tensor

from symtrain.transforms.base import Device, TransformFamily


class Affine(TransformFamily):
    """Random affine maps: rotation, translation (pixels), isotropic scale and shear.

    Element: (angle degrees, dy pixels, dx pixels, scale, shear degrees).

    Args:
        degrees: rotation drawn from [-degrees, degrees].
        max_pixels: translation drawn from [-max_pixels, max_pixels] per axis.
        scale: range of the isotropic scale factor.
        shear: shear angle along x drawn from [-shear, shear] degrees.
    """

    name = "affine"
    exact = False
    frame = "disk"

    def __init__(
        self,
        degrees: float = 15.0,
        max_pixels: float = 2.0,
        scale: tuple[float, float] = (0.9, 1.1),
        shear: float = 5.0,
    ) -> None:
        self.degrees = degrees
        self.max_pixels = max_pixels
        self.scale = scale
        self.shear = shear

    def sample(self, n: int, generator: torch.Generator | None = None, device: Device = None) -> Tensor:
        uniform = torch.rand(n, 5, generator=generator, device=device) * 2 - 1  # (n, 5) in [-1, 1]
        low, high = self.scale
        return torch.stack(
            [
                uniform[:, 0] * self.degrees,
                uniform[:, 1] * self.max_pixels,
                uniform[:, 2] * self.max_pixels,
                low + (uniform[:, 3] + 1) / 2 * (high - low),
                uniform[:, 4] * self.shear,
            ],
            dim=1,
        )

    def identity(self) -> Tensor:
        return torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0])

    def test_elements(self) -> Tensor:
        """Four corners of the parameter box, every parameter at an end of its range and each
        sign pattern once: as far from the identity as the family reaches."""
        low, high = self.scale
        d, t, s = self.degrees, self.max_pixels, self.shear
        return torch.tensor(
            [[d, t, -t, high, s], [-d, -t, t, low, -s], [d, -t, -t, low, -s], [-d, t, t, high, s]]
        )

    def apply(self, images: Tensor, elements: Tensor, mode: str = "bilinear") -> Tensor:
        height, width = images.shape[-2:]
        angle, dy, dx, scale, shear = elements.to(images).unbind(dim=1)
        theta, phi = angle * math.pi / 180, shear * math.pi / 180
        cos, sin = torch.cos(theta) * scale, torch.sin(theta) * scale
        # A = R(theta) * s * Shear_x(phi), about the image centre; kornia's y axis points down,
        # so a counter-clockwise rotation on screen has the sign flipped on sin.
        a, b = cos, cos * torch.tan(phi) + sin
        c, d = -sin, -sin * torch.tan(phi) + cos
        cy, cx = (height - 1) / 2, (width - 1) / 2
        matrix = torch.stack(
            [
                torch.stack([a, b, cx - a * cx - b * cy + dx], dim=1),
                torch.stack([c, d, cy - c * cx - d * cy + dy], dim=1),
            ],
            dim=1,
        )  # (B, 2, 3)
        return warp_affine(images, matrix, (height, width), mode=mode, align_corners=True)
