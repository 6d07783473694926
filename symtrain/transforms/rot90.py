"""Quarter turns: the group C4, exact on a square pixel grid."""

from __future__ import annotations

import torch
from torch import Tensor

from symtrain.transforms.base import Device, TransformFamily


class Rot90(TransformFamily):
    """Rotations by multiples of 90 degrees (the group C4): exact on a square pixel grid.

    Element: the number k of counter-clockwise quarter turns, in {0, 1, 2, 3}.
    """

    name = "rot90"
    exact = True

    def sample(self, n: int, generator: torch.Generator | None = None, device: Device = None) -> Tensor:
        return torch.randint(0, 4, (n, 1), generator=generator, device=device).float()

    def apply(self, images: Tensor, elements: Tensor, mode: str = "bilinear") -> Tensor:
        quarter_turns = (elements[:, 0].to(images.device).round().long() % 4).view(-1, 1, 1, 1)
        out = images
        for k in range(1, 4):  # every rotation, chosen per sample: no host sync on a GPU
            out = torch.where(quarter_turns == k, torch.rot90(images, k, dims=(-2, -1)), out)
        return out

    def test_elements(self) -> Tensor:
        """Every element but the identity: 90, 180 and 270 degrees."""
        return torch.tensor([[1.0], [2.0], [3.0]])

    def inverse(self, elements: Tensor) -> Tensor:
        return (-elements) % 4

    def orbit(self, height: int, width: int) -> Tensor | None:
        """The four quarter turns; a quarter turn maps only a square grid onto itself."""
        return torch.arange(4.0)[:, None] if height == width else None

    def why_no_group(self, height: int, width: int) -> str | None:
        return None if height == width else "quarter turns map only a square grid onto itself"

    def layer_elements(self, stride: int) -> Tensor | None:
        return torch.tensor([[1.0]])

    def act_on_features(self, features: Tensor, element: Tensor, stride: int) -> Tensor | None:
        return torch.rot90(features, int(element[0]) % 4, dims=(-2, -1))

    def orthogonal(self, element: Tensor) -> tuple[int, bool] | None:
        return int(element[0]) % 4, False
