"""Maximum-entropy smooth diffeomorphisms (Petrini et al. 2021), built from sine modes."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from symtrain.errors import SymtrainError
from symtrain.transforms.base import Device, TransformFamily


def sine_modes(size: int, cut: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """sin(π k u) for u in linspace(0, 1, size) and k = 1..cut: (size, cut). Zero at both edges, so
    a field built from them leaves the border in place."""
    u = torch.linspace(0, 1, size, device=device, dtype=dtype)
    k = torch.arange(1, cut + 1, device=device, dtype=dtype)
    return torch.sin(math.pi * u[:, None] * k[None, :])


class Diffeo(TransformFamily):
    """Maximum-entropy smooth diffeomorphisms (Petrini et al. 2021): not a group, approximate.

    Each displacement component is a sum of sine modes, u(x, y) = Σ c_ij sin(πix) sin(πjy) over
    i, j ≥ 1 with √(i² + j²) < c + ½ (``cut`` c), coefficients c_ij ~ N(0, T / (i² + j²)), on
    coordinates scaled to [0, 1]; the image is resampled (bilinear) at p − τ(p), border pixels
    repeated. The temperature T is set from the target displacement δ (pixels) with the
    paper's T = 4δ² / (π n² ln c), so the displacement in pixels is √T·n·u whatever the
    image's side n: ⟨‖τ‖²⟩ ≈ δ² over the image (the paper's estimate; for c = 3 the exact sum
    gives a root-mean-square displacement of 0.82 δ).

    Element: the 2c² standard-normal coefficients (x then y; modes outside the cut-off are
    unused); all zeros is the identity. Random elements are fresh normals; the test elements
    four seeded ones.

    Args:
        delta: target displacement δ, pixels.
        cut: the high-frequency cut-off c (an integer ≥ 2).
    """

    name = "diffeo"
    exact = False

    def __init__(self, delta: float = 1.0, cut: int = 3) -> None:
        if cut < 2 or int(cut) != cut:
            raise SymtrainError(f"Diffeo cut={cut}: choose an integer of at least 2 (the paper uses 3 to 15)")
        if delta < 0:
            raise SymtrainError(f"Diffeo delta={delta}: choose a displacement of at least 0 pixels")
        self.delta = float(delta)
        self.cut = int(cut)

    def sample(self, n: int, generator: torch.Generator | None = None, device: Device = None) -> Tensor:
        return torch.randn(n, 2 * self.cut**2, generator=generator, device=device)

    def displacement(self, elements: Tensor, height: int, width: int) -> Tensor:
        """The displacement fields (B, 2, H, W) in pixels, x then y, of ``elements`` (B, 2c²)."""
        c, dtype, device = self.cut, torch.float32, elements.device
        k = torch.arange(1, c + 1, dtype=dtype, device=device)
        radius = (k[:, None] ** 2 + k[None, :] ** 2).sqrt()
        energy = (radius < c + 0.5) / radius  # √(1 / energy) of each mode, 0 beyond the cut-off
        # displacement in pixels = √T · n · u, with T = 4δ² / (π n² ln c)
        amplitude = 2 * self.delta / math.sqrt(math.pi * math.log(c))
        coefficients = elements.to(dtype).view(-1, 2, c, c) * energy * amplitude
        sy, sx = sine_modes(height, c, device, dtype), sine_modes(width, c, device, dtype)
        # coefficient (i, j): i along x, j along y, as the paper's einsum('ij,xi,yj->yx')
        return torch.einsum("bdij,xi,yj->bdyx", coefficients, sx, sy)

    def apply(self, images: Tensor, elements: Tensor, mode: str = "bilinear") -> Tensor:
        """Resample ``images`` at p − τ(p) (``mode``: ``bilinear``, or ``nearest`` for masks)."""
        _, _, height, width = images.shape
        field = self.displacement(elements.to(images.device), height, width).to(images.dtype)
        y = torch.arange(height, device=images.device, dtype=images.dtype)[:, None]
        x = torch.arange(width, device=images.device, dtype=images.dtype)[None, :]
        # sample at p − τ(p), in grid_sample's [-1, 1] coordinates (pixel centres at the ends)
        sample_x = (x - field[:, 0]) * (2 / max(width - 1, 1)) - 1
        sample_y = (y - field[:, 1]) * (2 / max(height - 1, 1)) - 1
        grid = torch.stack([sample_x, sample_y], dim=-1)  # (B, H, W, 2)
        moved = torch.nn.functional.grid_sample(
            images, grid, mode=mode, padding_mode="border", align_corners=True
        )
        identity = (elements == 0).all(dim=1).to(images.device).view(-1, 1, 1, 1)
        return torch.where(identity, images, moved)  # the identity exactly, not up to rounding
