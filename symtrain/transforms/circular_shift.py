"""Circular (wrap-around) integer translations: exact, a permutation of pixels.

Also the sampling and the test elements of integer shifts, which :class:`Shift` shares.
"""

from __future__ import annotations

import math

import kornia.augmentation as K
import torch
from torch import Tensor

from symtrain.errors import SymtrainError
from symtrain.transforms.base import Device, TransformFamily
from symtrain.transforms.functional import fourier_shift


def _integer_shifts(n: int, max_pixels: int, generator: torch.Generator | None, device: Device) -> Tensor:
    # Uniform in [-m, m)^2, the offsets of Zhang 2019's and Chaman & Dokmanic's consistency.
    return torch.randint(-max_pixels, max_pixels, (n, 2), generator=generator, device=device).float()


def _spread_shifts(max_pixels: int) -> Tensor:
    """The quarter turns of (a, b), a and b the largest odd shifts up to m/2 and m: four
    elements pointing four ways, at least |(1, 1)| from the identity, and odd, so that no
    element is a whole cell of any stride-2 downsampling.

    Examples:
        >>> _spread_shifts(8).tolist()
        [[3.0, 7.0], [7.0, -3.0], [-3.0, -7.0], [-7.0, 3.0]]
    """
    b = max(1, max_pixels if max_pixels % 2 else max_pixels - 1)
    a = max(1, max_pixels // 2 if (max_pixels // 2) % 2 else max_pixels // 2 - 1)
    return torch.tensor([[a, b], [b, -a], [-a, -b], [-b, a]], dtype=torch.float32)


class CircularShift(TransformFamily):
    """Circular (wrap-around) integer translations: exact, a permutation of pixels.

    Element: (dy, dx) in pixels. Random elements are uniform in [-m, m)^2; the test elements
    are the quarter turns of (a, b), a and b the largest odd shifts up to m/2 and m ((3, 7),
    (7, -3), (-3, -7), (-7, 3) for m = 8). On a feature map of cumulative stride s, a shift by
    a fraction of a cell acts as the band-limited (Fourier) fractional shift, the only action
    that a shift-equivariant, alias-free layer commutes with; layers are measured under the
    sub-cell shifts (t, t), t in {1, s/2, s-1}.

    With ``stride`` s > 1 the family holds the shifts by multiples of s only (random and test
    elements are s times those of ``max_pixels // s``): the shifts that a network with total
    stride s can be exactly invariant to, and the orbit that averaging over it sums over.

    Args:
        max_pixels: largest absolute shift along each axis.
        stride: every shift is a multiple of it.
    """

    name = "circular_shift"
    exact = True
    examples = ({}, {"max_pixels": 8, "stride": 4})

    def __init__(self, max_pixels: int = 8, stride: int = 1) -> None:
        if stride < 1 or max_pixels < stride:
            raise SymtrainError(
                f"CircularShift(max_pixels={max_pixels}, stride={stride}): the stride must be at least 1 "
                "and at most max_pixels"
            )
        self.max_pixels = max_pixels
        self.stride = stride

    def sample(self, n: int, generator: torch.Generator | None = None, device: Device = None) -> Tensor:
        return _integer_shifts(n, self.max_pixels // self.stride, generator, device) * self.stride

    def test_elements(self) -> Tensor:
        return _spread_shifts(self.max_pixels // self.stride) * self.stride

    def inverse(self, elements: Tensor) -> Tensor:
        return -elements

    def orbit(self, height: int, width: int) -> Tensor | None:
        """Every distinct wrap-around shift that multiples of the stride reach on an H x W image:
        H W / s^2 of them when s divides both sides; otherwise the multiples wrap around to those
        of gcd(s, H) down and gcd(s, W) across, a larger group."""
        rows = torch.arange(0, height, math.gcd(self.stride, height), dtype=torch.float32)
        cols = torch.arange(0, width, math.gcd(self.stride, width), dtype=torch.float32)
        return torch.cartesian_prod(rows, cols)

    def size_problem(self, height: int, width: int) -> str | None:
        side = min(height, width)
        if self.max_pixels >= side:
            return (
                f"its shifts of up to {self.max_pixels} pixels wrap around the whole {side}-pixel side: "
                f"measure it with max_pixels below {side} (e.g. {max(1, side // 4)})"
            )
        return None

    def why_no_group(self, height: int, width: int) -> str | None:
        if height % self.stride or width % self.stride:
            return (
                f"shifts by multiples of {self.stride} wrap around to others on a side that is not a "
                f"multiple of {self.stride}"
            )
        return None

    def apply(self, images: Tensor, elements: Tensor, mode: str = "bilinear") -> Tensor:
        # torch.roll takes one shift per call; group the batch by distinct shifts.
        shifts = elements.to(images.device).round().long()
        out = torch.empty_like(images)
        for shift in torch.unique(shifts, dim=0):
            chosen = (shifts == shift).all(dim=1)
            out[chosen] = torch.roll(images[chosen], (int(shift[0]), int(shift[1])), dims=(-2, -1))
        return out

    def layer_elements(self, stride: int) -> Tensor | None:
        # Sub-cell diagonal shifts: one pixel, half a cell and a cell less one pixel (every
        # one of them up to stride 4), so a deep backbone costs three passes per layer at most.
        steps = torch.tensor(sorted({1, max(stride // 2, 1), max(stride - 1, 1)}), dtype=torch.float32)
        return torch.stack([steps, steps], dim=1)  # (E, 2)

    def act_on_features(self, features: Tensor, element: Tensor, stride: int) -> Tensor | None:
        dy, dx = (int(v) for v in element.round())
        if dy % stride == 0 and dx % stride == 0:
            return torch.roll(features, (dy // stride, dx // stride), dims=(-2, -1))
        return fourier_shift(features, dy / stride, dx / stride)

    def augmentation(self, p: float, image_size: tuple[int, int]) -> K.AugmentationBase2D:
        raise SymtrainError(
            "circular_shift has no kornia augmentation (kornia warps pad, they do not wrap): "
            "augment with Shift instead and measure with CircularShift"
        )
