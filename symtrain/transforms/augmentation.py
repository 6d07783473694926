"""A family's random augmentation in kornia's augmentation machinery."""

from __future__ import annotations

from typing import TYPE_CHECKING

import kornia.augmentation as K
from torch import Tensor

if TYPE_CHECKING:  # the base builds this augmentation: imported for annotations only
    from symtrain.transforms.base import TransformFamily


class FamilyAugmentation(K.AugmentationBase2D):
    """A family's random augmentation: kornia's augmentation machinery (probability per
    sample, pipelines, masks, replay of the drawn parameters) around the family's own
    :meth:`~TransformFamily.sample` and :meth:`~TransformFamily.apply`, so training sees
    exactly the action that measurements apply, with elements drawn on the batch's device.
    Masks are moved by the same elements with nearest-neighbour resampling.

    Hand-written around kornia rather than one of kornia's own random augmentations: those
    draw and warp by their own conventions (a flip with p = 1 mirrors every image; quarter turns
    drawn from a rounded uniform range come out 0 and 3 half as often as 1 and 2), which a
    measurement of the family would not replay.

    Examples:
        >>> import torch
        >>> from symtrain.transforms import Rot90
        >>> augmentation = FamilyAugmentation(Rot90(), p=1.0)
        >>> images = torch.rand(4, 1, 8, 8)
        >>> out = augmentation(images)
        >>> torch.equal(out, Rot90().apply(images, augmentation._params["elements"]))
        True
    """

    def __init__(self, family: TransformFamily, p: float = 1.0) -> None:
        super().__init__(p=p, same_on_batch=False, p_batch=1.0, keepdim=False)
        self.family = family

    def generate_parameters(self, shape: tuple[int, ...]) -> dict[str, Tensor]:
        return {"elements": self.family.sample(shape[0], device=self.device)}

    def apply_transform(
        self, input: Tensor, params: dict[str, Tensor], flags: dict, transform: Tensor | None = None
    ) -> Tensor:
        return self.family.apply(input, params["elements"])

    def apply_non_transform_mask(
        self, input: Tensor, params: dict[str, Tensor], flags: dict, transform: Tensor | None = None
    ) -> Tensor:
        return input

    def apply_transform_mask(
        self, input: Tensor, params: dict[str, Tensor], flags: dict, transform: Tensor | None = None
    ) -> Tensor:
        return self.family.apply(input, params["elements"], mode="nearest")
