"""Pure-torch measures of invariance and equivariance (no Lightning, no numpy round trips).

Every function works on batches on the model's device and returns per-sample values, so the
caller can average them with distributed metric states.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from kornia.filters import gaussian_blur2d
from torch import Tensor

if TYPE_CHECKING:
    from symtrain.transforms import TransformFamily


def relative_error(transformed: Tensor, reference: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-sample ||transformed - reference|| / ||reference||.

    For logits this is the invariance error of f under g when ``transformed = f(g x)`` and
    ``reference = f(x)``; for feature maps it is the equivariance error when
    ``transformed = f(g x)`` and ``reference = g' f(x)``.

    Args:
        transformed: (B, ...) outputs for the transformed inputs.
        reference: (B, ...) the outputs they should equal.

    Returns:
        (B,) relative errors; 0 where the two agree exactly.

    Examples:
        >>> x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
        >>> relative_error(x, x).tolist()
        [0.0, 0.0]
        >>> round(relative_error(torch.tensor([[3.0, 5.0]]), torch.tensor([[3.0, 4.0]])).item(), 6)
        0.2
    """
    difference = (transformed - reference).flatten(1).norm(dim=1)
    return difference / reference.flatten(1).norm(dim=1).clamp_min(eps)


def agreement(predictions: Tensor, other: Tensor, where: Tensor | None = None) -> Tensor:
    """Per-sample agreement of two predictions: 1.0 or 0.0 for classes (B,) (the consistency of
    Zhang 2019), the share of agreeing pixels for class maps (B, H, W), counted only where
    ``where`` (B, 1, H, W) is true when given (the region both views see).

    Examples:
        >>> agreement(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])).tolist()
        [1.0, 0.0, 1.0]
        >>> maps = torch.tensor([[[1, 2], [3, 4]]])
        >>> agreement(maps, torch.tensor([[[1, 0], [3, 0]]])).tolist()
        [0.5]
        >>> agreement(maps, torch.tensor([[[1, 0], [3, 0]]]), torch.tensor([[[[1, 0], [1, 0]]]])).tolist()
        [1.0]
    """
    same = (predictions == other).float()
    if same.dim() == 1:
        return same
    same = same.flatten(1)  # (B, H * W)
    if where is None:
        return same.mean(dim=1)
    where = where.flatten(1).to(same.dtype)
    return (same * where).sum(dim=1) / where.sum(dim=1).clamp_min(1)


def visible_region(family: TransformFamily, elements: Tensor, images: Tensor, disk: bool) -> Tensor:
    """Where both the original and the transformed view hold image content: (B, 1, H, W) bool.

    Pixels a transformation brings in from outside the frame (zero fill) are excluded, and
    with ``disk`` everything outside the inscribed disk, where interpolated measurements are
    taken.

    Examples:
        >>> from symtrain.transforms import Shift
        >>> seen = visible_region(Shift(), torch.tensor([[0.0, 2.0]]), torch.zeros(1, 1, 4, 4), disk=False)
        >>> seen[0, 0, 0].tolist()
        [False, False, True, True]
    """
    ones = images.new_ones(images.shape[0], 1, *images.shape[-2:])
    seen = family.apply(ones, elements) > 0.999
    return seen & (disk_mask(ones) > 0.999) if disk else seen


def transform_masks(family: TransformFamily, masks: Tensor, elements: Tensor, num_classes: int) -> Tensor:
    """Move class masks (B, H, W) with ``elements``: the family acts on their one-hot maps, and
    each pixel takes the class of largest weight (exact families move them exactly).

    Examples:
        >>> from symtrain.transforms import Rot90
        >>> masks = torch.tensor([[[0, 1], [2, 0]]])
        >>> torch.equal(transform_masks(Rot90(), masks, torch.tensor([[1.0]]), 3), masks.rot90(1, (-2, -1)))
        True
    """
    one_hot = torch.nn.functional.one_hot(masks, num_classes).permute(0, 3, 1, 2).float()  # (B, K, H, W)
    return family.apply(one_hot, elements).argmax(dim=1)


def isotropic_blur(images: Tensor) -> Tensor:
    """A gaussian blur: exactly equivariant to every rotation of the continuous image, so its
    measured equivariance error under a pixel-grid rotation is what interpolation alone costs.

    Examples:
        >>> image = torch.rand(1, 1, 9, 9)
        >>> rotated = isotropic_blur(image.rot90(1, (-2, -1)))
        >>> bool(torch.allclose(rotated, isotropic_blur(image).rot90(1, (-2, -1)), atol=1e-6))
        True
    """
    return gaussian_blur2d(images, (7, 7), (1.5, 1.5), border_type="constant")


def disk_mask(images: Tensor) -> Tensor:
    """Zero everything outside the disk inscribed in the image (soft one-pixel edge).

    A continuous rotation moves the corners out of the frame; on the disk it only
    interpolates, so measurements under interpolated actions are taken on masked images.

    Examples:
        >>> masked = disk_mask(torch.ones(1, 1, 9, 9))
        >>> masked[0, 0, 4, 4].item(), masked[0, 0, 0, 0].item()
        (1.0, 0.0)
    """
    height, width = images.shape[-2:]
    y = torch.arange(height, device=images.device, dtype=images.dtype) - (height - 1) / 2
    x = torch.arange(width, device=images.device, dtype=images.dtype) - (width - 1) / 2
    radius = torch.sqrt(y[:, None] ** 2 + x[None, :] ** 2)
    return images * (min(height, width) / 2 - radius).clamp(0, 1)


def radial_profile(images: Tensor, rings: int = 8) -> Tensor:
    """Mean intensity in concentric rings about the centre, per channel: (B, C * rings).

    Exactly invariant to every rotation of the continuous image, so its measured "invariance
    error" under a pixel-grid rotation is the error that interpolation alone causes: the floor
    below which no model's error under that family can be read as the model's fault.

    Examples:
        >>> image = torch.rand(2, 1, 16, 16)
        >>> bool(torch.allclose(radial_profile(image), radial_profile(image.rot90(1, (-2, -1)))))
        True
    """
    height, width = images.shape[-2:]
    y = torch.arange(height, device=images.device, dtype=images.dtype) - (height - 1) / 2
    x = torch.arange(width, device=images.device, dtype=images.dtype) - (width - 1) / 2
    radius = torch.sqrt(y[:, None] ** 2 + x[None, :] ** 2) / (min(height, width) / 2)
    ring = (radius * rings).floor().clamp(max=rings).long().flatten()  # (H*W,), ring `rings` = outside
    # (H*W, rings), by comparison: F.one_hot checks the values' range on the host (a sync)
    one_hot = (ring[:, None] == torch.arange(rings, device=ring.device)).to(images.dtype)
    sums = images.flatten(2) @ one_hot  # (B, C, rings)
    return (sums / one_hot.sum(0).clamp_min(1)).flatten(1)
