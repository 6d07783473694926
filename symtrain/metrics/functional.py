"""Pure-torch measures of invariance and equivariance (no Lightning, no numpy round trips).

Every function works on batches on the model's device and returns per-sample values, so the
caller can average them with distributed metric states.
"""

from __future__ import annotations

import torch
from torch import Tensor


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


def agreement(predictions: Tensor, other: Tensor) -> Tensor:
    """Per-sample 1.0 where two predicted classes agree (the consistency of Zhang 2019).

    Examples:
        >>> agreement(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])).tolist()
        [1.0, 0.0, 1.0]
    """
    return (predictions == other).float()


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
    one_hot = torch.nn.functional.one_hot(ring, rings + 1)[:, :rings].to(images.dtype)  # (H*W, rings)
    sums = images.flatten(2) @ one_hot  # (B, C, rings)
    return (sums / one_hot.sum(0).clamp_min(1)).flatten(1)
