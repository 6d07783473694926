"""Pure-torch operations on image batches and feature maps that the families build on."""

from __future__ import annotations

import torch
from torch import Tensor


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


def fourier_shift(features: Tensor, dy: float, dx: float) -> Tensor:
    """Shift a periodic map (..., h, w) by a fraction of a cell: the band-limited (sinc)
    interpolation of a circular shift, exact for whole cells.

    Hand-written: neither torch nor kornia offers a sub-pixel circular shift. The real part
    is kept: for even sides the Nyquist component's fractional shift is ambiguous, and the
    real part takes its cosine, so a real map stays real.

    Examples:
        >>> x = torch.rand(1, 1, 4, 6)
        >>> bool(torch.allclose(fourier_shift(x, 1.0, -2.0), x.roll((1, -2), (-2, -1)), atol=1e-6))
        True
    """
    height, width = features.shape[-2:]
    real = features if features.dtype == torch.float64 else features.float()
    fy = torch.fft.fftfreq(height, device=features.device, dtype=real.dtype)[:, None]
    fx = torch.fft.fftfreq(width, device=features.device, dtype=real.dtype)[None, :]
    phase = -2 * torch.pi * (fy * dy + fx * dx)  # (h, w)
    ramp = torch.polar(torch.ones_like(phase), phase)
    return torch.fft.ifft2(torch.fft.fft2(real) * ramp).real.to(features.dtype)
