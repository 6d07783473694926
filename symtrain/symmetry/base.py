"""The symmetry-strategy contract: how a model is meant to get its symmetry."""

from __future__ import annotations

from typing import Any, ClassVar, overload

from torch import Tensor, nn

from symtrain.backbones.base import Backbone
from symtrain.transforms import TransformFamily


class SymmetryStrategy(nn.Module):
    """Base class of symmetry strategies.

    A strategy names the transformation families it is about, may check the backbone it is
    composed with (:meth:`check`, called once when the model is built) and may transform
    training batches on their device (:meth:`augment`, called only while training).

    Args:
        families: the transformation families this strategy targets.

    Attributes:
        examples: arguments of instances the contract tests build, one per form worth testing.
    """

    examples: ClassVar[tuple[dict[str, Any], ...]] = ({},)

    def __init__(self, families: list[TransformFamily] | None = None) -> None:
        super().__init__()
        self.families = list(families or [])

    def check(self, backbone: Backbone, image_size: int | None = None) -> None:
        """Raise :class:`~symtrain.errors.SymtrainError` if ``backbone`` cannot serve this strategy
        (on images of side ``image_size``, when known)."""

    @overload
    def augment(self, images: Tensor) -> Tensor: ...

    @overload
    def augment(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]: ...

    def augment(self, images: Tensor, masks: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Transform training ``images`` (B, C, H, W), floats in [0, 1], and with them their
        ``masks`` (B, H, W) of class indices when given (then both are returned)."""
        return images if masks is None else (images, masks)

    def extra_repr(self) -> str:
        return f"families={self.families}"


class NoSymmetry(SymmetryStrategy):
    """No augmentation and no requirement: whatever symmetry the backbone has by itself.

    Examples:
        >>> import torch
        >>> x = torch.rand(2, 1, 8, 8)
        >>> torch.equal(NoSymmetry().augment(x), x)
        True
    """

    def __init__(self) -> None:
        super().__init__()
