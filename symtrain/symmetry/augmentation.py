"""Symmetry learned from data: kornia augmentations applied to training batches on their device."""

from __future__ import annotations

import kornia.augmentation as K
from torch import Tensor

from symtrain.errors import SymtrainError
from symtrain.symmetry.base import SymmetryStrategy
from symtrain.transforms import Flip, Rot90, Rotation, Shift, TransformFamily


class Augmentation(SymmetryStrategy):
    """Apply random elements of each family, in order, to every training batch.

    The augmentation runs batched on the batch's device (GPU when training on one). Each
    family draws its own random elements and applies them with its own ``apply``, the action
    the measurements use (:class:`~symtrain.transforms.FamilyAugmentation`), to each sample
    with probability ``p``; unlike kornia's own default of 0.5, it is 1 (a random element of a
    family includes the identity: a flip family flips half of the images).

    Args:
        families: the transformation families to sample from.
        p: probability of applying each family to a sample.

    Examples:
        >>> import torch
        >>> from symtrain.transforms import Rot90
        >>> strategy = Augmentation([Rot90()])
        >>> strategy.augment(torch.rand(4, 1, 8, 8)).shape
        torch.Size([4, 1, 8, 8])
        >>> images, masks = strategy.augment(torch.rand(4, 1, 8, 8), torch.randint(0, 3, (4, 8, 8)))
        >>> masks.shape, masks.dtype
        (torch.Size([4, 8, 8]), torch.int64)
    """

    examples = ({"families": [Rot90(), Shift(2)]}, {"families": [Rotation(), Flip()], "p": 0.5})

    def __init__(self, families: list[TransformFamily], p: float = 1.0) -> None:
        super().__init__(families)
        if not self.families:
            raise SymtrainError(
                "Augmentation needs at least one family: set model.symmetry.families, e.g. [Rotation]"
            )
        if not 0.0 <= p <= 1.0:
            raise SymtrainError(f"Augmentation p={p} is not a probability: choose a value in [0, 1]")
        self.p = p
        # One pipeline per image size, rebuilt on demand from the families. Kept out of the
        # module tree: kornia keeps its sampling ranges as buffers, which would otherwise land
        # in checkpoints under a key per image size seen, and a model reloaded before it saw
        # that size could not take them back. Nothing here is learned.
        self._pipelines: dict[tuple[int, int], K.AugmentationSequential] = {}
        # Build one pipeline now so a family kornia cannot sample fails before training starts.
        self.pipeline((32, 32))

    def pipeline(self, image_size: tuple[int, int]) -> K.AugmentationSequential:
        """The kornia pipeline for one image size (pixel-valued magnitudes depend on it)."""
        image_size = tuple(image_size)
        if image_size not in self._pipelines:
            # Each family's augmentation moves masks itself, by the same elements, nearest neighbour.
            self._pipelines[image_size] = K.AugmentationSequential(
                *(family.augmentation(self.p, image_size) for family in self.families)
            )
        return self._pipelines[image_size]

    def augment(self, images: Tensor, masks: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        height, width = images.shape[-2:]
        pipeline = self.pipeline((height, width)).to(images.device)
        if masks is None:
            return pipeline(images)
        # One draw of parameters moves both; kornia resamples masks with nearest neighbour, and
        # what enters the frame is 0, the background.
        images, moved = pipeline(images, masks[:, None].to(images.dtype), data_keys=["input", "mask"])
        return images, moved[:, 0].round().long()
