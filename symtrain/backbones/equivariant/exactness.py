"""What an escnn backbone's group makes exact on a pixel grid, and the images it needs for that.

Only quarter turns and flips map a square pixel grid onto itself: a group holding them makes
the pooled features exactly invariant to them, every other rotation and every shift only
approximately.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from symtrain.errors import SymtrainError
from symtrain.transforms import CircularShift, Flip, Rot90, Rotation, Shift, Symmetries

if TYPE_CHECKING:
    from symtrain.backbones.base import Backbone


def grid_symmetries(rotations: int, reflections: bool) -> Symmetries:
    """The declared symmetries of a network that commutes exactly with ``rotations`` rotations
    (and, with ``reflections``, with escnn's reflection) of the plane: rot90 is exact when the
    rotations hold the quarter turns; escnn's reflection (axis 0) is ``x.flip(-1)``, the other
    mirror is it composed with a half turn, which only an even number of rotations holds (an
    O(2) grid of 6 samples has 3 rotations: its vertical flip is off by about 0.1).

    Examples:
        >>> sorted(f"{family!r} {how}" for family, how in grid_symmetries(4, False).items() if how == "exact")
        ['Rot90() exact']
        >>> [family for family, how in grid_symmetries(3, True).items() if how == "exact"]
        [Flip(axis='horizontal')]
    """
    declared: Symmetries = {
        Rotation(): "approximate",
        Shift(): "approximate",
        CircularShift(): "approximate",
    }
    if rotations % 4 == 0:
        declared[Rot90()] = "exact"
    if reflections:
        axes = ("horizontal", "vertical") if rotations % 2 == 0 else ("horizontal",)
        declared.update({Flip(axis): "exact" for axis in axes})
    return declared


def check_square(images: Tensor, name: str) -> None:
    """Refuse images that are not square: rot90 and flips map only a square grid onto itself.

    Examples:
        >>> import torch
        >>> check_square(torch.zeros(1, 1, 8, 8), "EquivariantCNN")
        >>> check_square(torch.zeros(1, 1, 8, 9), "EquivariantCNN")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        symtrain.errors.SymtrainError: EquivariantCNN needs square images (got (8, 9)): rot90 and flips ...
    """
    if images.shape[-1] != images.shape[-2]:
        raise SymtrainError(
            f"{name} needs square images (got {tuple(images.shape[-2:])}): "
            "rot90 and flips map only a square grid onto itself; crop or pad the data"
        )


def strided_grid_problem(backbone: Backbone, image_size: int) -> str | None:
    """Why ``image_size`` breaks the exact claims of a backbone that downsamples by strided
    convolutions (:class:`~symtrain.backbones.EquivariantWideResNet`): they sample a grid
    symmetric about the centre only on sides 1 more than a multiple of its total stride (None
    when the side is one, or nothing is declared exact)."""
    exact = any(how == "exact" for how in backbone.declared_symmetries().values())
    if not exact or (image_size - 1) % backbone.total_stride == 0:
        return None
    fit = image_size - (image_size - 1) % backbone.total_stride
    return (
        f"{backbone.name} is exactly invariant only on images whose side is 1 more than a multiple "
        f"of its total stride {backbone.total_stride} (its strided convolutions then sample a grid "
        f"symmetric about the centre), not {image_size}: resize the data (e.g. --data.image_size {fit})"
    )
