"""How a transformation family's element acts on escnn fields: the group element it stands for."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from torch import Tensor

from symtrain._lazy import lazy_module
from symtrain.transforms import TransformFamily

if TYPE_CHECKING:
    from escnn import nn as enn
else:  # escnn is imported when the first EquivariantCNN is built, not by every symtrain command
    enn = lazy_module("escnn.nn")


def _group_element(group: Any, family: TransformFamily, element: Tensor) -> Any:
    """The element of an escnn group that acts like ``family``'s ``element`` on the pixel grid,
    or None when the group does not contain it (or the family's elements are no symmetry of
    the grid: :meth:`~symtrain.transforms.TransformFamily.orthogonal`). ``torch.rot90(x, 1,
    (-2, -1))`` is escnn's rotation by +90 degrees and ``x.flip(-1)`` its reflection (1, 0),
    both checked in tests."""
    orthogonal = family.orthogonal(element)
    if orthogonal is None:
        return None
    quarter_turns, flip = orthogonal
    if group.name.startswith(("C", "D")):
        order = int(group.name[1:])
        if (order * quarter_turns) % 4 or (flip and group.name.startswith("C")):
            return None
        rotation = order * quarter_turns // 4
        return group.element((int(flip), rotation)) if group.name.startswith("D") else group.element(rotation)
    angle = quarter_turns * math.pi / 2
    if group.name == "SO(2)":
        return None if flip else group.element(angle)
    return group.element((int(flip), angle))


def _is_regular(field_type: enn.FieldType) -> bool:
    """Regular fields (finite groups) allow pointwise maps such as ReLU and group pooling."""
    return all("pointwise" in rep.supported_nonlinearities for rep in field_type.representations)
