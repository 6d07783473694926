"""Mirror images: the group D1, exact."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from symtrain.transforms.base import Device, TransformFamily


class Flip(TransformFamily):
    """Mirror images (the group D1): exact.

    Element: 1 to flip, 0 to keep.

    Args:
        axis: ``horizontal`` mirrors left-right, ``vertical`` mirrors top-bottom.
    """

    name = "flip"
    exact = True
    action_parameters = ("axis",)
    examples = ({"axis": "horizontal"}, {"axis": "vertical"})

    def __init__(self, axis: Literal["horizontal", "vertical"] = "horizontal") -> None:
        self.axis = axis

    def sample(self, n: int, generator: torch.Generator | None = None, device: Device = None) -> Tensor:
        return torch.randint(0, 2, (n, 1), generator=generator, device=device).float()

    def apply(self, images: Tensor, elements: Tensor, mode: str = "bilinear") -> Tensor:
        dim = -1 if self.axis == "horizontal" else -2
        flipped = elements[:, 0].to(images.device).round().bool().view(-1, *([1] * (images.dim() - 1)))
        return torch.where(flipped, images.flip(dim), images)

    def test_elements(self) -> Tensor:
        """The one element that is not the identity: the mirror image."""
        return torch.tensor([[1.0]])

    def inverse(self, elements: Tensor) -> Tensor:
        return elements

    def orbit(self, height: int, width: int) -> Tensor | None:
        return torch.tensor([[0.0], [1.0]])

    def layer_elements(self, stride: int) -> Tensor | None:
        return torch.tensor([[1.0]])

    def act_on_features(self, features: Tensor, element: Tensor, stride: int) -> Tensor | None:
        return self.apply(features, element.view(1, -1).expand(len(features), -1))

    def orthogonal(self, element: Tensor) -> tuple[int, bool] | None:
        if not bool(element[0]):
            return 0, False
        # a top-bottom mirror is the left-right one followed by a half turn
        return (0, True) if self.axis == "horizontal" else (2, True)
