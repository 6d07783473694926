"""Transformation families: the one place that says what "a symmetry" is.

A family (rot90, flip, circular shift, shift with zero fill, continuous rotation, affine,
elastic, smooth diffeomorphisms) knows how to

* act on an image batch with given per-sample elements (:meth:`TransformFamily.apply`),
  used by measurements that must be reproducible;
* sample random elements (:meth:`TransformFamily.sample`);
* augment training batches with random elements (:meth:`TransformFamily.augmentation`, a
  :class:`FamilyAugmentation`: ``sample`` and ``apply`` in kornia's augmentation machinery,
  so the augmentation is the measured action by construction), on the batch's device;
* say whether its action on the pixel grid is exact (a permutation of pixels: rot90, flips,
  integer rolls) or interpolated/lossy (everything else);
* say how a measurement sees it (:meth:`TransformFamily.measured`, on the frame of
  :attr:`TransformFamily.frame`) and which fixed elements it measures
  (:meth:`TransformFamily.test_elements`).

Backbones declare their symmetries by family ``name``; strategies and metrics take family
objects. So augmentation, architecture and measurement cannot disagree about a symmetry.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any, ClassVar, Literal

import kornia.augmentation as K
import torch
from kornia.geometry.transform import elastic_transform2d, rotate, warp_affine
from torch import Tensor

from symtrain.errors import SymtrainError

Exactness = Literal["exact", "approximate"]
Frame = Literal["grid", "disk", "canvas"]
Device = torch.device | str | None


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
    # Where a measurement compares g·x with x: the pixel grid as is (exact families), the
    # inscribed disk (interpolated warps: the corners leave the frame), or a zero-padded canvas
    # (zero-fill shifts: nothing leaves it).
    frame: ClassVar[Frame] = "grid"

    def sample(self, n: int, generator: torch.Generator | None = None, device: Device = None) -> Tensor:
        """Draw ``n`` random elements, shape (n, P), on ``device`` (the CPU by default; training
        draws them on the batch's device, so no copy waits for it)."""
        raise NotImplementedError

    def apply(self, images: Tensor, elements: Tensor, mode: str = "bilinear") -> Tensor:
        """Act on ``images`` (B, C, H, W) with one element per sample, ``elements`` (B, P);
        interpolating families resample with ``mode`` (``nearest`` for class masks)."""
        raise NotImplementedError

    def test_elements(self) -> Tensor:
        """The fixed elements that measurements apply, shape (E, P): spread over the family
        and bounded away from the identity (each family documents its choice). By default
        four seeded random elements, none the identity."""
        elements = self.sample(16, torch.Generator().manual_seed(0))
        is_identity = (elements == self.identity()).all(dim=1)
        return elements[~is_identity][:4]

    def identity(self) -> Tensor:
        """The identity element, shape (P,)."""
        return torch.zeros(self.sample(1, torch.Generator().manual_seed(0)).shape[1])

    def inverse(self, elements: Tensor) -> Tensor | None:
        """The inverse elements (N, P), or None where the family cannot say."""
        return None

    def orbit(self, height: int, width: int) -> Tensor | None:
        """Every element of the family, when it is a finite group acting on images of this size
        (the identity first), shape (|G|, P); None when it is not (continuous or interpolated
        families): what averaging over the group sums over exactly."""
        return None

    def why_no_group(self, height: int, width: int) -> str | None:
        """Why the family's elements are no finite group on images of this size (so averaging
        over its orbit is not exact for them), or None when they are one."""
        return None if self.orbit(height, width) is not None else "it has no finite orbit"

    def size_problem(self, height: int, width: int) -> str | None:
        """Why this family cannot be measured on images of this size (its elements would move
        the content by the whole image or more), or None when it can."""
        return None

    def canvas(self, images: Tensor) -> Tensor:
        """The images on this family's measurement frame, before any element acts: as they are,
        or zero-padded for families whose action moves content out of the frame."""
        return images

    def measured(self, images: Tensor, elements: Tensor) -> Tensor:
        """What a measurement feeds the model for g·x: the action on the family's frame
        (:attr:`frame`), masked to the inscribed disk once, after the action, for ``disk``. The
        identity element gives the reference view, so at the identity every error is 0."""
        moved = self.apply(self.canvas(images), elements)
        return disk_mask(moved) if self.frame == "disk" else moved

    def layer_elements(self, stride: int) -> Tensor | None:
        """Elements (E, P) to measure a feature map of cumulative ``stride`` with, or None when
        the family has no action on feature maps."""
        return None

    def act_on_features(self, features: Tensor, element: Tensor, stride: int) -> Tensor | None:
        """The spatial part of ``element``'s action on a feature map (B, C, h, w) whose cells are
        ``stride`` input pixels apart; None where the family has none."""
        return None

    def augmentation(self, p: float, image_size: tuple[int, int]) -> K.AugmentationBase2D:
        """A kornia augmentation drawing random elements of this family (:meth:`sample`) and
        applying them with :meth:`apply`, each sample with probability p: the augmentation is
        the measured action by construction."""
        return FamilyAugmentation(self, p)

    # The constructor arguments that change which transformations the family holds (a flip's
    # axis), as opposed to how far its random elements reach (a range): a claim about a family
    # holds for another of the same type with the same action parameters.
    action_parameters: ClassVar[tuple[str, ...]] = ()
    # Constructor arguments of the instances the contract tests build, one per form.
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({},)

    def covers(self, other: TransformFamily) -> bool:
        """Whether a claim made about this family (a backbone's declared invariance) holds for
        ``other``: the same family with the same action, whatever its range.

        Examples:
            >>> Flip("horizontal").covers(Flip("vertical")), Rotation(180).covers(Rotation(15))
            (False, True)
        """
        return type(other) is type(self) and all(
            getattr(self, name) == getattr(other, name) for name in self.action_parameters
        )

    @property
    def label(self) -> str:
        """The family's name with its action parameters, e.g. ``flip (axis=vertical)``."""
        args = ", ".join(f"{name}={getattr(self, name)}" for name in self.action_parameters)
        return f"{self.name} ({args})" if args else self.name

    def orthogonal(self, element: Tensor) -> tuple[int, bool] | None:
        """``element`` as a symmetry of the square grid: (counter-clockwise quarter turns, whether
        it mirrors left-right first), or None for a family whose elements are not (translations
        and warps act on positions only). Backbones with a group acting on their channels read
        it (escnn fields)."""
        return None

    @classmethod
    def definition(cls) -> str:
        """The class docstring on one line, without its ``Args:`` and ``Examples:`` sections:
        what the family is, its elements and how it is measured (the report shows it)."""
        text = inspect.getdoc(cls) or ""
        for section in ("Args:", "Examples:"):
            text = text.split(section)[0]
        text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)  # :class:`Shift` -> Shift
        return " ".join(text.replace("``", "").split())

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


Symmetries = dict[TransformFamily, Exactness]
"""What a backbone declares: families (objects, with their parameters) and how exactly its
pooled features are invariant to them."""


def families_by_name() -> dict[str, type[TransformFamily]]:
    """Every family class defined so far, by :attr:`TransformFamily.name`."""
    found, pending = {}, [TransformFamily]
    while pending:
        for cls in pending.pop().__subclasses__():
            pending.append(cls)
            if hasattr(cls, "name"):
                found.setdefault(cls.name, cls)
    return found


def declared_exactness(declared: Symmetries, family: TransformFamily) -> Exactness | None:
    """How exactly ``declared`` claims invariance to ``family`` (``exact`` wins), or None.

    Examples:
        >>> declared_exactness({Flip("horizontal"): "exact"}, Flip("vertical")) is None
        True
        >>> declared_exactness({CircularShift(): "exact"}, CircularShift(max_pixels=3))
        'exact'
    """
    found = {how for claim, how in declared.items() if claim.covers(family)}
    return "exact" if "exact" in found else "approximate" if found else None


class Rot90(TransformFamily):
    """Rotations by multiples of 90 degrees (the group C4): exact on a square pixel grid.

    Element: the number k of counter-clockwise quarter turns, in {0, 1, 2, 3}.
    """

    name = "rot90"
    exact = True

    def sample(self, n: int, generator: torch.Generator | None = None, device: Device = None) -> Tensor:
        return torch.randint(0, 4, (n, 1), generator=generator, device=device).float()

    def apply(self, images: Tensor, elements: Tensor, mode: str = "bilinear") -> Tensor:
        quarter_turns = (elements[:, 0].to(images.device).round().long() % 4).view(-1, 1, 1, 1)
        out = images
        for k in range(1, 4):  # every rotation, chosen per sample: no host sync on a GPU
            out = torch.where(quarter_turns == k, torch.rot90(images, k, dims=(-2, -1)), out)
        return out

    def test_elements(self) -> Tensor:
        """Every element but the identity: 90, 180 and 270 degrees."""
        return torch.tensor([[1.0], [2.0], [3.0]])

    def inverse(self, elements: Tensor) -> Tensor:
        return (-elements) % 4

    def orbit(self, height: int, width: int) -> Tensor | None:
        """The four quarter turns; a quarter turn maps only a square grid onto itself."""
        return torch.arange(4.0)[:, None] if height == width else None

    def why_no_group(self, height: int, width: int) -> str | None:
        return None if height == width else "quarter turns map only a square grid onto itself"

    def layer_elements(self, stride: int) -> Tensor | None:
        return torch.tensor([[1.0]])

    def act_on_features(self, features: Tensor, element: Tensor, stride: int) -> Tensor | None:
        return torch.rot90(features, int(element[0]) % 4, dims=(-2, -1))

    def orthogonal(self, element: Tensor) -> tuple[int, bool] | None:
        return int(element[0]) % 4, False


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


def _integer_shifts(n: int, max_pixels: int, generator: torch.Generator | None, device: Device) -> Tensor:
    # Uniform in [-m, m)^2, the offsets of Zhang 2019's and Chaman & Dokmanic's consistency.
    return torch.randint(-max_pixels, max_pixels, (n, 2), generator=generator, device=device).float()


def _spread_shifts(max_pixels: int) -> Tensor:
    """The quarter turns of (a, b), a and b the largest odd shifts up to m/2 and m: four
    elements pointing four ways, at least |(1, 1)| from the identity, and odd, so that no
    element is a whole cell of any stride-2 downsampling.

    Examples:
        >>> _spread_shifts(8).tolist()
        [[3.0, 7.0], [7.0, -3.0], [-3.0, -7.0], [-7.0, 3.0]]
    """
    b = max(1, max_pixels if max_pixels % 2 else max_pixels - 1)
    a = max(1, max_pixels // 2 if (max_pixels // 2) % 2 else max_pixels // 2 - 1)
    return torch.tensor([[a, b], [b, -a], [-a, -b], [-b, a]], dtype=torch.float32)


class CircularShift(TransformFamily):
    """Circular (wrap-around) integer translations: exact, a permutation of pixels.

    Element: (dy, dx) in pixels. Random elements are uniform in [-m, m)^2; the test elements
    are the quarter turns of (a, b), a and b the largest odd shifts up to m/2 and m ((3, 7),
    (7, -3), (-3, -7), (-7, 3) for m = 8). On a feature map of cumulative stride s, a shift by
    a fraction of a cell acts as the band-limited (Fourier) fractional shift, the only action
    that a shift-equivariant, alias-free layer commutes with; layers are measured under the
    sub-cell shifts (t, t), t in {1, s/2, s-1}.

    With ``stride`` s > 1 the family holds the shifts by multiples of s only (random and test
    elements are s times those of ``max_pixels // s``): the shifts that a network with total
    stride s can be exactly invariant to, and the orbit that averaging over it sums over.

    Args:
        max_pixels: largest absolute shift along each axis.
        stride: every shift is a multiple of it.
    """

    name = "circular_shift"
    exact = True
    examples = ({}, {"max_pixels": 8, "stride": 4})

    def __init__(self, max_pixels: int = 8, stride: int = 1) -> None:
        if stride < 1 or max_pixels < stride:
            raise SymtrainError(
                f"CircularShift(max_pixels={max_pixels}, stride={stride}): the stride must be at least 1 "
                "and at most max_pixels"
            )
        self.max_pixels = max_pixels
        self.stride = stride

    def sample(self, n: int, generator: torch.Generator | None = None, device: Device = None) -> Tensor:
        return _integer_shifts(n, self.max_pixels // self.stride, generator, device) * self.stride

    def test_elements(self) -> Tensor:
        return _spread_shifts(self.max_pixels // self.stride) * self.stride

    def inverse(self, elements: Tensor) -> Tensor:
        return -elements

    def orbit(self, height: int, width: int) -> Tensor | None:
        """Every distinct wrap-around shift that multiples of the stride reach on an H x W image:
        H W / s^2 of them when s divides both sides; otherwise the multiples wrap around to those
        of gcd(s, H) down and gcd(s, W) across, a larger group."""
        rows = torch.arange(0, height, math.gcd(self.stride, height), dtype=torch.float32)
        cols = torch.arange(0, width, math.gcd(self.stride, width), dtype=torch.float32)
        return torch.cartesian_prod(rows, cols)

    def size_problem(self, height: int, width: int) -> str | None:
        side = min(height, width)
        if self.max_pixels >= side:
            return (
                f"its shifts of up to {self.max_pixels} pixels wrap around the whole {side}-pixel side: "
                f"measure it with max_pixels below {side} (e.g. {max(1, side // 4)})"
            )
        return None

    def why_no_group(self, height: int, width: int) -> str | None:
        if height % self.stride or width % self.stride:
            return (
                f"shifts by multiples of {self.stride} wrap around to others on a side that is not a "
                f"multiple of {self.stride}"
            )
        return None

    def apply(self, images: Tensor, elements: Tensor, mode: str = "bilinear") -> Tensor:
        # torch.roll takes one shift per call; group the batch by distinct shifts.
        shifts = elements.to(images.device).round().long()
        out = torch.empty_like(images)
        for shift in torch.unique(shifts, dim=0):
            chosen = (shifts == shift).all(dim=1)
            out[chosen] = torch.roll(images[chosen], (int(shift[0]), int(shift[1])), dims=(-2, -1))
        return out

    def layer_elements(self, stride: int) -> Tensor | None:
        # Sub-cell diagonal shifts: one pixel, half a cell and a cell less one pixel (every
        # one of them up to stride 4), so a deep backbone costs three passes per layer at most.
        steps = torch.tensor(sorted({1, max(stride // 2, 1), max(stride - 1, 1)}), dtype=torch.float32)
        return torch.stack([steps, steps], dim=1)  # (E, 2)

    def act_on_features(self, features: Tensor, element: Tensor, stride: int) -> Tensor | None:
        dy, dx = (int(v) for v in element.round())
        if dy % stride == 0 and dx % stride == 0:
            return torch.roll(features, (dy // stride, dx // stride), dims=(-2, -1))
        return fourier_shift(features, dy / stride, dx / stride)

    def augmentation(self, p: float, image_size: tuple[int, int]) -> K.AugmentationBase2D:
        raise SymtrainError(
            "circular_shift has no kornia augmentation (kornia warps pad, they do not wrap): "
            "augment with Shift instead and measure with CircularShift"
        )


class Shift(TransformFamily):
    """Integer translations with zero fill: content leaving the frame is lost.

    Element: (dy, dx) in pixels; random elements uniform in [-m, m)^2, test elements the
    quarter turns of (a, b) as for :class:`CircularShift`. Measurements take place on a
    canvas zero-padded by m on every side (``frame = "canvas"``), so that no shift of the
    family moves content out of it and only the model's response is measured.

    Args:
        max_pixels: largest absolute shift along each axis.
    """

    name = "shift"
    exact = False
    frame = "canvas"

    def __init__(self, max_pixels: int = 4) -> None:
        self.max_pixels = max_pixels

    def sample(self, n: int, generator: torch.Generator | None = None, device: Device = None) -> Tensor:
        return _integer_shifts(n, self.max_pixels, generator, device)

    def test_elements(self) -> Tensor:
        return _spread_shifts(self.max_pixels)

    def inverse(self, elements: Tensor) -> Tensor:
        return -elements

    def canvas(self, images: Tensor) -> Tensor:
        return torch.nn.functional.pad(images, [self.max_pixels] * 4)

    def apply(self, images: Tensor, elements: Tensor, mode: str = "bilinear") -> Tensor:
        matrix = torch.zeros(elements.shape[0], 2, 3, dtype=images.dtype, device=images.device)
        matrix[:, 0, 0] = 1.0
        matrix[:, 1, 1] = 1.0
        matrix[:, 0, 2] = elements[:, 1].to(images)
        matrix[:, 1, 2] = elements[:, 0].to(images)
        return warp_affine(images, matrix, images.shape[-2:], mode="nearest", align_corners=True)


class Rotation(TransformFamily):
    """Continuous rotations about the image centre (SO(2)), bilinear, zero fill.

    Interpolated: only multiples of 90 degrees are exact on a pixel grid, so measurements
    take place on the inscribed disk (``frame = "disk"``), where a rotation only interpolates.
    Element: the angle in degrees, counter-clockwise. The test elements are spread over
    [-d, d], a quarter of the range apart, offset by the golden ratio of a step:
    -d + (k + 0.618) d / 2, k = 0..3 (-124.4, -34.4, 55.6 and 145.6 degrees for the full circle),
    each then moved, where needed, to the nearest angle in range that is at least
    min(10, d / 2) degrees from every multiple of 22.5 degrees: the elements of C4, C8 and C16
    (the groups the shipped escnn configs build in), so no such model is flattered by meeting
    its own elements (C8 is exactly invariant at 45 degrees, and only there), and the identity,
    so no element is a near-identity that any model passes (for d = 15: -10.4, -7.5, 7.5, 12.1).

    Args:
        degrees: angles are drawn uniformly from [-degrees, degrees]; 180 covers the circle.
    """

    name = "rotation"
    exact = False
    frame = "disk"

    def __init__(self, degrees: float = 180.0) -> None:
        self.degrees = degrees

    def sample(self, n: int, generator: torch.Generator | None = None, device: Device = None) -> Tensor:
        return (torch.rand(n, 1, generator=generator, device=device) * 2 - 1) * self.degrees

    def test_elements(self) -> Tensor:
        golden = (math.sqrt(5) - 1) / 2  # 0.618...
        spread = -self.degrees + (torch.arange(4.0, dtype=torch.float64) + golden) * self.degrees / 2
        margin = min(10.0, self.degrees / 2)

        def clear(angles: Tensor) -> Tensor:  # far enough from every multiple of 22.5 degrees
            offset = torch.remainder(angles, 22.5)
            return torch.minimum(offset, 22.5 - offset) >= margin - 1e-9

        # Where an element is too near, the nearest clear angle on a 0.01 degree grid of the range.
        grid = torch.linspace(-self.degrees, self.degrees, round(200 * self.degrees) + 1, dtype=torch.float64)
        admissible = grid[clear(grid)]
        nearest = admissible[(spread[:, None] - admissible[None]).abs().argmin(dim=1)]
        return torch.where(clear(spread), spread, nearest)[:, None].float()

    def inverse(self, elements: Tensor) -> Tensor:
        return -elements

    def apply(self, images: Tensor, elements: Tensor, mode: str = "bilinear") -> Tensor:
        return rotate(images, elements[:, 0].to(images), mode=mode, align_corners=True)


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
    frame = "disk"

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

    def sample(self, n: int, generator: torch.Generator | None = None, device: Device = None) -> Tensor:
        uniform = torch.rand(n, 5, generator=generator, device=device) * 2 - 1  # (n, 5) in [-1, 1]
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

    def test_elements(self) -> Tensor:
        """Four corners of the parameter box, every parameter at an end of its range and each
        sign pattern once: as far from the identity as the family reaches."""
        low, high = self.scale
        d, t, s = self.degrees, self.max_pixels, self.shear
        return torch.tensor(
            [[d, t, -t, high, s], [-d, -t, t, low, -s], [d, -t, -t, low, -s], [-d, t, t, high, s]]
        )

    def apply(self, images: Tensor, elements: Tensor, mode: str = "bilinear") -> Tensor:
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
        return warp_affine(images, matrix, (height, width), mode=mode, align_corners=True)


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
