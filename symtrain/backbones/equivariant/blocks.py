"""The layers of :class:`~symtrain.backbones.equivariant.EquivariantCNN`: its convolution
blocks, its stages, its invariant map, and the mirrored stages of its decoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from symtrain._lazy import lazy_module
from symtrain.backbones.equivariant.action import _is_regular
from symtrain.backbones.equivariant.decoder import EquivariantDecoder
from symtrain.backbones.equivariant.groups import field_count

if TYPE_CHECKING:
    from escnn import nn as enn

    from symtrain.backbones.equivariant import layers as escnn_layers
else:  # escnn is imported when the first EquivariantCNN is built, not by every symtrain command
    enn = lazy_module("escnn.nn")
    escnn_layers = lazy_module("symtrain.backbones.equivariant.layers")


def invariant_map(field_type: enn.FieldType) -> enn.EquivariantModule:
    """The map to invariant features at the end: group pooling of regular fields (C_N, D_N),
    norm pooling of Fourier fields (SO(2), O(2))."""
    if _is_regular(field_type):
        return enn.GroupPooling(field_type)
    return enn.NormPool(field_type)


@dataclass(frozen=True)
class StageBuilder:
    """Builds the stages of an :class:`EquivariantCNN` and of its decoder, from the settings
    they share.

    Args:
        convs_per_stage: equivariant convolutions per stage.
        kernel_size: odd kernel size of the convolutions.
        width_rule: ``params`` or ``channels``: how a StandardCNN width becomes fields
            (:func:`~symtrain.backbones.equivariant.groups.field_count`).
        max_frequency: band limit of SO2/O2 fields.
        grid_size: group elements sampled by the Fourier nonlinearity of SO2/O2.
    """

    convs_per_stage: int
    kernel_size: int
    width_rule: str
    max_frequency: int
    grid_size: int

    def block(self, in_type: enn.FieldType, channels: int) -> list[enn.EquivariantModule]:
        """One (conv, batch norm, nonlinearity) block of ``channels`` StandardCNN-equivalent width."""
        gspace, kernel_size = in_type.gspace, self.kernel_size
        if gspace.fibergroup.order() > 0:  # finite group: regular fields, pointwise ReLU
            field_size = gspace.regular_repr.size
            fields = field_count(channels, field_size, self.width_rule)
            out_type = enn.FieldType(gspace, fields * [gspace.regular_repr])
            return [
                enn.R2Conv(in_type, out_type, kernel_size, padding=kernel_size // 2, bias=False),
                escnn_layers.InnerBatchNorm(out_type),
                enn.ReLU(out_type, inplace=True),
            ]
        # SO(2)/O(2): band-limited Fourier fields and a nonlinearity sampled on a group grid.
        irreps = gspace.fibergroup.bl_irreps(self.max_frequency)
        grid = {"N": self.grid_size} if gspace.fibergroup.name == "SO(2)" else {"N": self.grid_size // 2}
        probe = enn.FourierPointwise(gspace, 1, irreps, function="p_relu", **grid)
        fields = field_count(channels, probe.in_type.size, self.width_rule)
        activation = escnn_layers.FourierPointwise(gspace, fields, irreps, function="p_relu", **grid)
        return [
            enn.R2Conv(in_type, activation.in_type, kernel_size, padding=kernel_size // 2, bias=False),
            escnn_layers.IIDBatchNorm2d(activation.in_type),
            activation,
        ]

    def convolutions(self, field_type: enn.FieldType, channels: int) -> list[enn.EquivariantModule]:
        """One stage's ``convs_per_stage`` blocks of ``channels`` StandardCNN-equivalent width."""
        layers: list[enn.EquivariantModule] = []
        for _ in range(self.convs_per_stage):
            block = self.block(field_type, channels)
            layers.extend(block)
            field_type = block[-1].out_type
        return layers

    def encoder(
        self,
        in_type: enn.FieldType,
        width: int,
        depth: int,
        blur_size: int,
        restrict_from_stage: int | None = None,
        subgroup: Any = None,
    ) -> list[enn.EquivariantModule]:
        """The network's layers: ``depth`` stages of ``width * 2**stage`` channels, each ending
        in anti-aliased pooling, then the invariant map. From ``restrict_from_stage`` on, only
        the ``subgroup`` (escnn's id of it) is kept."""
        field_type, layers = in_type, []
        for stage in range(depth):
            if stage == restrict_from_stage:
                # Keep only the rotations: the features become fields of the subgroup, on
                # which the following convolutions are built.
                layers.append(enn.RestrictionModule(field_type, subgroup))
                field_type = layers[-1].out_type
            layers.extend(self.convolutions(field_type, width * 2**stage))
            field_type = layers[-1].out_type
            layers.append(escnn_layers.SymmetricBlurPool(field_type, blur_size))
        layers.append(invariant_map(field_type))
        return layers

    def decoder(
        self, pools: list[escnn_layers.SymmetricBlurPool], width: int, num_classes: int
    ) -> EquivariantDecoder:
        """An :class:`EquivariantDecoder` mirroring the stages that end in ``pools``: deepest
        first, each stage reads the upsampled fields and the skip's, then a 1x1 convolution to
        ``num_classes`` scalar fields."""
        field_type = pools[-1].out_type
        gspace = field_type.gspace
        stages = []
        for stage in reversed(range(len(pools))):
            # upsampled fields, then the skip's
            layers = self.convolutions(field_type + pools[stage].in_type, width * 2**stage)
            field_type = layers[-1].out_type
            stages.append(layers)
        scalars = enn.FieldType(gspace, num_classes * [gspace.trivial_repr])
        return EquivariantDecoder(stages, enn.R2Conv(field_type, scalars, kernel_size=1))
