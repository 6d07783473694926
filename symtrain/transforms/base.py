"""The base of every transformation family, and what backbones declare with families."""

from __future__ import annotations

import inspect
import re
from typing import Any, ClassVar, Literal

import kornia.augmentation as K
import torch
from torch import Tensor

from symtrain.transforms.augmentation import FamilyAugmentation
from symtrain.transforms.functional import disk_mask

Exactness = Literal["exact", "approximate"]
Frame = Literal["grid", "disk", "canvas"]
Device = torch.device | str | None


class TransformFamily:
    """Base class of a family of image transformations.

    Subclasses set ``name`` and ``exact`` and implement :meth:`sample`, :meth:`apply` and
    :meth:`augmentation`. Elements are encoded as a float tensor of shape (N, P) with one row
    of P parameters per sample.

    Examples:
        >>> from symtrain.transforms import Rot90
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
            >>> from symtrain.transforms import Flip, Rotation
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
        >>> from symtrain.transforms import CircularShift, Flip
        >>> declared_exactness({Flip("horizontal"): "exact"}, Flip("vertical")) is None
        True
        >>> declared_exactness({CircularShift(): "exact"}, CircularShift(max_pixels=3))
        'exact'
    """
    found = {how for claim, how in declared.items() if claim.covers(family)}
    return "exact" if "exact" in found else "approximate" if found else None
