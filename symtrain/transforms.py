"""Transformation families: the one place that says what "a symmetry" is.

A family (rot90, flip, circular shift, shift with zero fill, continuous rotation, affine,
elastic) knows how to

* act on an image batch with given per-sample elements (:meth:`TransformFamily.apply`),
  used by measurements that must be reproducible;
* sample random elements (:meth:`TransformFamily.sample`);
* build the equivalent random kornia augmentation (:meth:`TransformFamily.augmentation`),
  run on the batch's device by the augmentation strategy;
* say whether its action on the pixel grid is exact (a permutation of pixels: rot90, flips,
  integer rolls) or interpolated/lossy (everything else).

Backbones declare their symmetries by family ``name``; strategies and metrics take family
objects. So augmentation, architecture and measurement cannot disagree about a symmetry.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import kornia.augmentation as K
import torch
from kornia.geometry.transform import elastic_transform2d, rotate, warp_affine
from torch import Tensor

from symtrain.errors import SymtrainError

Exactness = Literal["exact", "approximate"]


class TransformFamily:
    """Base class of a family of image transformations.

    Subclasses set ``name`` and ``exact`` and implement :meth:`sample`, :meth:`apply` and
    :meth:`augmentation`. Elements are encoded as a float tensor of shape (N, P) with one row
    of P parameters per sample.

    Examples:
        >>> family = Rot90()
        >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
        >>> family.apply(x, torch.tensor([[1.0]])).flatten().tolist()
        [1.0, 3.0, 0.0, 2.0]
    """

    name: ClassVar[str]
    exact: ClassVar[bool]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` random elements, shape (n, P), on the CPU."""
        raise NotImplementedError

    def apply(self, images: Tensor, elements: Tensor) -> Tensor:
        """Act on ``images`` (B, C, H, W) with one element per sample, ``elements`` (B, P)."""
        raise NotImplementedError

    def test_elements(self, count: int = 3) -> Tensor:
        """Fixed elements that measurements apply, shape (E, P); seeded, never the identity."""
        elements = self.sample(4 * count, torch.Generator().manual_seed(0))
        is_identity = (elements == self.identity()).all(dim=1)
        return elements[~is_identity][:count]

    def identity(self) -> Tensor:
        """The identity element, shape (P,)."""
        return torch.zeros(self.sample(1, torch.Generator().manual_seed(0)).shape[1])

    def layer_element(self, stride: int) -> Tensor | None:
        """An element whose action on a feature map of cumulative ``stride`` is exact, (P,),
        or None when the family has no exact action on feature maps."""
        return None

    def act_on_features(self, features: Tensor, element: Tensor, stride: int) -> Tensor | None:
        """The spatial part of ``element``'s action on a feature map (B, C, h, w) whose cells are
        ``stride`` input pixels apart; None where it is not a permutation of cells."""
        return None

    def augmentation(self, p: float, image_size: tuple[int, int]) -> K.AugmentationBase2D:
        """A kornia augmentation drawing random elements of this family with probability p."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Rot90(TransformFamily):
    """Rotations by multiples of 90 degrees (the group C4): exact on a square pixel grid.

    Element: the number k of counter-clockwise quarter turns, in {0, 1, 2, 3}.
    """

    name = "rot90"
    exact = True

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(0, 4, (n, 1), generator=generator).float()

    def apply(self, images: Tensor, elements: Tensor) -> Tensor:
        quarter_turns = elements[:, 0].to(images.device).round().long() % 4  # (B,)
        out = images.clone()
        for k in range(1, 4):
            chosen = quarter_turns == k
            if chosen.any():
                out[chosen] = torch.rot90(images[chosen], k, dims=(-2, -1))
        return out

    def test_elements(self, count: int = 3) -> Tensor:
        return torch.tensor([[1.0], [2.0], [3.0]])

    def layer_element(self, stride: int) -> Tensor | None:
        return torch.tensor([1.0])

    def act_on_features(self, features: Tensor, element: Tensor, stride: int) -> Tensor | None:
        return torch.rot90(features, int(element[0]) % 4, dims=(-2, -1))

    def augmentation(self, p: float, image_size: tuple[int, int]) -> K.AugmentationBase2D:
        return K.RandomRotation90(times=(0, 3), p=p)


class Flip(TransformFamily):
    """Mirror images (the group D1): exact.

    Element: 1 to flip, 0 to keep.

    Args:
        axis: ``horizontal`` mirrors left-right, ``vertical`` mirrors top-bottom.
    """

    name = "flip"
    exact = True

    def __init__(self, axis: Literal["horizontal", "vertical"] = "horizontal") -> None:
        self.axis = axis

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(0, 2, (n, 1), generator=generator).float()

    def apply(self, images: Tensor, elements: Tensor) -> Tensor:
        dim = -1 if self.axis == "horizontal" else -2
        flipped = elements[:, 0].to(images.device).round().bool().view(-1, *([1] * (images.dim() - 1)))
        return torch.where(flipped, images.flip(dim), images)

    def test_elements(self, count: int = 3) -> Tensor:
        return torch.tensor([[1.0]])

    def layer_element(self, stride: int) -> Tensor | None:
        return torch.tensor([1.0])

    def act_on_features(self, features: Tensor, element: Tensor, stride: int) -> Tensor | None:
        return self.apply(features, element.view(1, -1).expand(len(features), -1))

    def augmentation(self, p: float, image_size: tuple[int, int]) -> K.AugmentationBase2D:
        if self.axis == "horizontal":
            return K.RandomHorizontalFlip(p=p)
        return K.RandomVerticalFlip(p=p)


def _integer_shifts(n: int, max_pixels: int, generator: torch.Generator | None) -> Tensor:
    return torch.randint(-max_pixels, max_pixels + 1, (n, 2), generator=generator).float()


class CircularShift(TransformFamily):
    """Circular (wrap-around) integer translations: exact, a permutation of pixels.

    Element: (dy, dx) in pixels.

    Args:
        max_pixels: largest absolute shift along each axis.
    """

    name = "circular_shift"
    exact = True

    def __init__(self, max_pixels: int = 8) -> None:
        self.max_pixels = max_pixels

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return _integer_shifts(n, self.max_pixels, generator)

    def apply(self, images: Tensor, elements: Tensor) -> Tensor:
        # torch.roll takes one shift per call; group the batch by distinct shifts.
        shifts = elements.to(images.device).round().long()
        out = torch.empty_like(images)
        for shift in torch.unique(shifts, dim=0):
            chosen = (shifts == shift).all(dim=1)
            out[chosen] = torch.roll(images[chosen], (int(shift[0]), int(shift[1])), dims=(-2, -1))
        return out

    def layer_element(self, stride: int) -> Tensor | None:
        return torch.tensor([float(stride), float(stride)])

    def act_on_features(self, features: Tensor, element: Tensor, stride: int) -> Tensor | None:
        dy, dx = (int(v) for v in element.round())
        if dy % stride or dx % stride:
            return None  # a shift by a fraction of a cell has no exact action on the map
        return torch.roll(features, (dy // stride, dx // stride), dims=(-2, -1))

    def augmentation(self, p: float, image_size: tuple[int, int]) -> K.AugmentationBase2D:
        raise SymtrainError(
            "circular_shift has no kornia augmentation (kornia warps pad, they do not wrap): "
            "augment with Shift instead and measure with CircularShift"
        )


class Shift(TransformFamily):
    """Integer translations with zero fill: content leaving the frame is lost.

    Element: (dy, dx) in pixels.

    Args:
        max_pixels: largest absolute shift along each axis.
    """

    name = "shift"
    exact = False

    def __init__(self, max_pixels: int = 4) -> None:
        self.max_pixels = max_pixels

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return _integer_shifts(n, self.max_pixels, generator)

    def apply(self, images: Tensor, elements: Tensor) -> Tensor:
        matrix = torch.zeros(elements.shape[0], 2, 3, dtype=images.dtype, device=images.device)
        matrix[:, 0, 0] = 1.0
        matrix[:, 1, 1] = 1.0
        matrix[:, 0, 2] = elements[:, 1].to(images)
        matrix[:, 1, 2] = elements[:, 0].to(images)
        return warp_affine(images, matrix, images.shape[-2:], mode="nearest", align_corners=True)

    def augmentation(self, p: float, image_size: tuple[int, int]) -> K.AugmentationBase2D:
        height, width = image_size
        # kornia samples fractions of the image size; nearest resampling keeps shifts on the grid.
        fy, fx = self.max_pixels / height, self.max_pixels / width
        return K.RandomTranslate((-fx, fx), (-fy, fy), resample="nearest", p=p)


class Rotation(TransformFamily):
    """Continuous rotations about the image centre (SO(2)), bilinear, zero fill.

    Interpolated: only multiples of 90 degrees are exact on a pixel grid.
    Element: the angle in degrees, counter-clockwise.

    Args:
        degrees: angles are drawn uniformly from [-degrees, degrees]; 180 covers the circle.
    """

    name = "rotation"
    exact = False

    def __init__(self, degrees: float = 180.0) -> None:
        self.degrees = degrees

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return (torch.rand(n, 1, generator=generator) * 2 - 1) * self.degrees

    def apply(self, images: Tensor, elements: Tensor) -> Tensor:
        # align_corners=True matches kornia's RandomRotation, so a measured element is the
        # same warp that augmentation applies.
        return rotate(images, elements[:, 0].to(images), align_corners=True)

    def augmentation(self, p: float, image_size: tuple[int, int]) -> K.AugmentationBase2D:
        return K.RandomRotation(degrees=self.degrees, p=p, align_corners=True)


class Affine(TransformFamily):
    """Random affine maps: rotation, translation (pixels), isotropic scale and shear.

    Element: (angle degrees, dy pixels, dx pixels, scale, shear degrees).

    Args:
        degrees: rotation drawn from [-degrees, degrees].
        max_pixels: translation drawn from [-max_pixels, max_pixels] per axis.
        scale: range of the isotropic scale factor.
        shear: shear angle along x drawn from [-shear, shear] degrees.
    """

    name = "affine"
    exact = False

    def __init__(
        self,
        degrees: float = 15.0,
        max_pixels: float = 2.0,
        scale: tuple[float, float] = (0.9, 1.1),
        shear: float = 5.0,
    ) -> None:
        self.degrees = degrees
        self.max_pixels = max_pixels
        self.scale = scale
        self.shear = shear

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        uniform = torch.rand(n, 5, generator=generator) * 2 - 1  # (n, 5) in [-1, 1]
        low, high = self.scale
        return torch.stack(
            [
                uniform[:, 0] * self.degrees,
                uniform[:, 1] * self.max_pixels,
                uniform[:, 2] * self.max_pixels,
                low + (uniform[:, 3] + 1) / 2 * (high - low),
                uniform[:, 4] * self.shear,
            ],
            dim=1,
        )

    def identity(self) -> Tensor:
        return torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0])

    def apply(self, images: Tensor, elements: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        angle, dy, dx, scale, shear = elements.to(images).unbind(dim=1)
        theta, phi = angle * math.pi / 180, shear * math.pi / 180
        cos, sin = torch.cos(theta) * scale, torch.sin(theta) * scale
        # A = R(theta) * s * Shear_x(phi), about the image centre; kornia's y axis points down,
        # so a counter-clockwise rotation on screen has the sign flipped on sin.
        a, b = cos, cos * torch.tan(phi) + sin
        c, d = -sin, -sin * torch.tan(phi) + cos
        cy, cx = (height - 1) / 2, (width - 1) / 2
        matrix = torch.stack(
            [
                torch.stack([a, b, cx - a * cx - b * cy + dx], dim=1),
                torch.stack([c, d, cy - c * cx - d * cy + dy], dim=1),
            ],
            dim=1,
        )  # (B, 2, 3)
        return warp_affine(images, matrix, (height, width), align_corners=True)

    def augmentation(self, p: float, image_size: tuple[int, int]) -> K.AugmentationBase2D:
        height, width = image_size
        translate = (self.max_pixels / width, self.max_pixels / height)
        return K.RandomAffine(
            degrees=self.degrees,
            translate=translate,
            scale=self.scale,
            shear=(-self.shear, self.shear),
            align_corners=True,
            p=p,
        )


class Elastic(TransformFamily):
    """Small smooth random deformations (Simard et al. 2003): not a group, only approximate.

    Element: a seed per sample, from which a gaussian-smoothed displacement field is drawn,
    so a measurement can re-apply the same deformation.

    Args:
        alpha: displacement scale (in units of half the image size, kornia's convention).
        sigma: smoothing of the displacement field, in pixels.
        kernel_size: size of the smoothing kernel (odd).
    """

    name = "elastic"
    exact = False

    def __init__(self, alpha: float = 1.0, sigma: float = 4.0, kernel_size: int = 15) -> None:
        self.alpha = alpha
        self.sigma = sigma
        self.kernel_size = kernel_size

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(0, 2**31 - 1, (n, 1), generator=generator).float()

    def apply(self, images: Tensor, elements: Tensor) -> Tensor:
        batch, _, height, width = images.shape
        noise = torch.empty(batch, 2, height, width)
        for i, seed in enumerate(elements[:, 0].long().tolist()):
            noise[i] = torch.rand(2, height, width, generator=torch.Generator().manual_seed(seed))
        noise = (noise * 2 - 1).to(images)
        return elastic_transform2d(
            images,
            noise,
            kernel_size=(self.kernel_size, self.kernel_size),
            sigma=(self.sigma, self.sigma),
            alpha=(self.alpha, self.alpha),
            align_corners=True,
        )

    def augmentation(self, p: float, image_size: tuple[int, int]) -> K.AugmentationBase2D:
        return K.RandomElasticTransform(
            kernel_size=(self.kernel_size, self.kernel_size),
            sigma=(self.sigma, self.sigma),
            alpha=(self.alpha, self.alpha),
            align_corners=True,
            p=p,
        )
