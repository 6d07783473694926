"""How a transformation family's element acts on escnn fields: the group element it stands for."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
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


class FieldAction:
    """``act_on_layer`` for backbones whose named layers hold escnn fields: the spatial action,
    then the fields' representation on the channels (pure torch: escnn's
    ``GeometricTensor.transform`` goes through numpy on the CPU). Layers whose type the
    backbone does not give (None) are not acted on exactly. Mixed into a
    :class:`~symtrain.backbones.base.Backbone`, whose ``layer_strides`` it reads."""

    def _layer_types(self) -> dict[str, enn.FieldType | None]:
        """The field type of every named layer."""
        raise NotImplementedError

    def act_on_layer(
        self, name: str, family: TransformFamily, element: Tensor, features: Tensor
    ) -> Tensor | None:
        spatial = family.act_on_features(features, element, self.layer_strides()[name])
        if spatial is None or family.orthogonal(element) is None:
            return spatial  # translations act on the grid only
        field_type = self._layer_types()[name]
        if field_type is None:
            return None
        group_element = _group_element(field_type.gspace.fibergroup, family, element)
        if group_element is None:
            return None
        cache: dict[tuple, Tensor] = self.__dict__.setdefault("_representations", {})
        key = (name, family.name, tuple(element.tolist()), str(features.device), features.dtype)
        if key not in cache:
            matrix = field_type.representation(group_element)
            cache[key] = torch.as_tensor(matrix, dtype=features.dtype, device=features.device)
        return torch.einsum("oc,bc...->bo...", cache[key], spatial)
