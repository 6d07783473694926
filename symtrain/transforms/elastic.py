"""Small smooth random deformations (elastic distortions), seeded per sample."""

from __future__ import annotations

import torch
from kornia.geometry.transform import elastic_transform2d
from torch import Tensor

from symtrain.transforms.base import Device, TransformFamily


class Elastic(TransformFamily):
    """Small smooth random deformations (Simard et al. 2003): not a group, only approximate.

    Element: a seed per sample, from which a gaussian-smoothed displacement field is drawn,
    so a measurement can re-apply the same deformation; -1 is the identity (no deformation).

    Args:
        alpha: displacement scale (in units of half the image size, kornia's convention).
        sigma: smoothing of the displacement field, in pixels.
        kernel_size: size of the smoothing kernel (odd).
    """

    name = "elastic"
    exact = False
    frame = "disk"

    def __init__(self, alpha: float = 1.0, sigma: float = 4.0, kernel_size: int = 15) -> None:
        self.alpha = alpha
        self.sigma = sigma
        self.kernel_size = kernel_size

    def sample(self, n: int, generator: torch.Generator | None = None, device: Device = None) -> Tensor:
        # seeds stay on the CPU whatever the device: apply reads them to seed each field
        return torch.randint(0, 2**24, (n, 1), generator=generator).float()  # exact in float32

    def identity(self) -> Tensor:
        return torch.tensor([-1.0])

    def apply(self, images: Tensor, elements: Tensor, mode: str = "bilinear") -> Tensor:
        _, _, height, width = images.shape
        seeds = elements[:, 0].long().tolist()
        noise = []
        for seed in seeds:  # each field from its own seed, drawn where the images are
            generator = torch.Generator(images.device).manual_seed(max(seed, 0))
            noise.append(torch.rand(2, height, width, generator=generator, device=images.device))
        noise = torch.stack(noise).to(images.dtype) * 2 - 1
        kept = torch.tensor([seed < 0 for seed in seeds]).to(images.device).view(-1, 1, 1, 1)
        deformed = elastic_transform2d(
            images,
            noise,
            kernel_size=(self.kernel_size, self.kernel_size),
            sigma=(self.sigma, self.sigma),
            alpha=(self.alpha, self.alpha),
            align_corners=True,
            mode=mode,
        )
        return torch.where(kept, images, deformed)
