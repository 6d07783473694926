"""The symmetry groups of :class:`~symtrain.backbones.equivariant.EquivariantCNN`: which groups
and settings it accepts, the escnn space each group acts on, and how many fields a width
makes."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from symtrain._lazy import lazy_module
from symtrain.errors import SymtrainError

if TYPE_CHECKING:
    from escnn import gspaces
else:  # escnn is imported when the first EquivariantCNN is built, not by every symtrain command
    gspaces = lazy_module("escnn.gspaces")

Group = Literal["C", "D", "SO2", "O2"]


def check_settings(
    group: Group, order: int, depth: int, kernel_size: int, blur_size: int, restrict_from_stage: int | None
) -> None:
    """Refuse the settings an :class:`EquivariantCNN` cannot be built with (a one-line
    :class:`~symtrain.errors.SymtrainError` naming the fix).

    Examples:
        >>> check_settings("D", 4, depth=2, kernel_size=5, blur_size=3, restrict_from_stage=1)
        >>> check_settings("C", 4, depth=2, kernel_size=4, blur_size=3, restrict_from_stage=None)
        Traceback (most recent call last):
        ...
        symtrain.errors.SymtrainError: kernel_size and blur_size must be odd, so padding stays symmetric
    """
    if group in ("C", "D") and order < 1:
        raise SymtrainError(f"model.backbone.order={order}: a C_N or D_N group needs N >= 1")
    if kernel_size % 2 == 0 or blur_size % 2 == 0:
        raise SymtrainError("kernel_size and blur_size must be odd, so padding stays symmetric")
    restricts = restrict_from_stage is not None
    if restricts and (
        group in ("C", "SO2") or (group, order) == ("D", 1) or not 0 < restrict_from_stage < depth
    ):
        raise SymtrainError(
            f"restrict_from_stage={restrict_from_stage} needs a D_N (N >= 2) or O2 group "
            f"and a stage in 1..{depth - 1}"
        )


def gspace_of(group: Group, order: int) -> gspaces.GSpace2D:
    """escnn's space of the plane acted on by ``group`` (C_N and D_N with N = ``order``)."""
    if group == "C":
        return gspaces.rot2dOnR2(order)
    if group == "D":
        return gspaces.flipRot2dOnR2(order)
    if group == "SO2":
        return gspaces.rot2dOnR2(-1)
    return gspaces.flipRot2dOnR2(-1)


def field_count(channels: int, field_size: int, width_rule: str) -> int:
    """Fields of ``field_size`` channels standing for ``channels`` StandardCNN channels:
    ``channels / field_size`` (``channels``) or ``channels / sqrt(field_size)`` (``params``).

    Examples:
        >>> field_count(16, 4, "channels"), field_count(16, 4, "params"), field_count(2, 16, "channels")
        (4, 8, 1)
    """
    per_field = field_size if width_rule == "channels" else math.sqrt(field_size)
    return max(1, round(channels / per_field))


def rotations_on_grid(group: Group, order: int, grid_size: int) -> int:
    """The rotations the network commutes with exactly: the N of C_N and D_N; for SO(2) and
    O(2), those on the Fourier nonlinearity's grid (for O(2) half its samples are reflections).

    Examples:
        >>> rotations_on_grid("D", 4, 16), rotations_on_grid("SO2", 4, 16), rotations_on_grid("O2", 4, 6)
        (4, 16, 3)
    """
    if group in ("C", "D"):
        return order
    return grid_size if group == "SO2" else grid_size // 2


def group_label(group: Group, order: int, restricted: bool) -> str:
    """The group's part of a model's name: ``C4``, ``D4``, ``SO2``, ``O2``, and after a
    restriction its rotation subgroup (``D4_C4`` is D4|C4).

    Examples:
        >>> group_label("C", 4, False), group_label("D", 4, True), group_label("O2", 4, True)
        ('C4', 'D4_C4', 'O2_SO2')
    """
    label = f"{group}{order}" if group in ("C", "D") else group
    subgroup = f"C{order}" if group == "D" else "SO2"
    return f"{label}_{subgroup}" if restricted else label
