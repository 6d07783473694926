"""EquivariantCNN: the escnn backbone (stages, invariant map, dense form, layer-wise action)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import Tensor, nn

from symtrain._lazy import lazy_module
from symtrain.backbones.base import Backbone, Feature, LayerEdit, Pyramid
from symtrain.backbones.equivariant.action import FieldAction, _is_regular
from symtrain.backbones.equivariant.decoder import EquivariantDecoder, ExportedEncoder, _export_layer
from symtrain.backbones.equivariant.filters import _EscnnFilters, use_exact_svd_in_escnn
from symtrain.backbones.equivariant.ops import DiskMask, read_slice_bounds_on_host
from symtrain.errors import SymtrainError
from symtrain.transforms import CircularShift, Flip, Rot90, Rotation, Shift, Symmetries

if TYPE_CHECKING:
    from escnn import gspaces
    from escnn import nn as enn

    from symtrain.backbones.equivariant import layers as escnn_layers
else:  # escnn is imported when the first EquivariantCNN is built, not by every symtrain command
    gspaces = lazy_module("escnn.gspaces")
    enn = lazy_module("escnn.nn")
    escnn_layers = lazy_module("symtrain.backbones.equivariant.layers")

Group = Literal["C", "D", "SO2", "O2"]


class EquivariantCNN(_EscnnFilters, FieldAction, Backbone):
    """An escnn CNN equivariant to C_N, D_N, SO(2) or O(2), with invariant output features.

    Topology mirrors :class:`~symtrain.backbones.StandardCNN`: ``depth`` stages of
    ``convs_per_stage`` (conv, batch norm, nonlinearity) blocks, each stage ending in
    anti-aliased stride-2 pooling, then an invariant map (group pooling for C_N/D_N, norm
    pooling for SO(2)/O(2)). Stage s targets ``width * 2**s`` channels, like StandardCNN;
    ``width_rule`` turns that into a number of fields of size d (d = |G| for regular fields):

    - ``params`` (the default): ``width * 2**s / sqrt(d)`` fields, so the parameter count
      stays about the same whatever the group (Weiler & Cesa's ``fixparams``): the fair
      comparison;
    - ``channels``: ``width * 2**s / d`` fields, so feature maps have as many channels as
      StandardCNN's (and about d times fewer parameters).

    Args:
        in_channels: image channels (linked from the data by the CLI).
        group: ``C`` (rotations by 360/N), ``D`` (plus reflections), ``SO2``, ``O2``.
        order: N for C_N and D_N; ignored for SO2/O2.
        width: StandardCNN-equivalent channels of the first stage.
        depth: number of stages.
        convs_per_stage: equivariant convolutions per stage.
        kernel_size: odd kernel size of the convolutions.
        width_rule: ``params`` or ``channels`` (see above).
        max_frequency: band limit of SO2/O2 fields.
        grid_size: group elements sampled by the Fourier nonlinearity of SO2/O2 (for O2 half
            are reflections); rot90 stays exact when the grid holds the quarter turns.
        restrict_from_stage: from this stage on, keep only the rotation subgroup (D_N -> C_N,
            O(2) -> SO(2)), like the D16|5C16 models of Weiler & Cesa (2019); None keeps G.
        blur_size: side of the binomial filter of the anti-aliased pooling.
        disk_mask: mask the input to its inscribed disk (for continuous rotations).

    Examples:
        >>> import torch
        >>> net = EquivariantCNN(in_channels=1, group="C", order=4, width=8, depth=2)
        >>> x = torch.rand(2, 1, 29, 29)
        >>> features = net.eval()(x)
        >>> features.shape  # 8 C4 fields in the last stage (16 StandardCNN channels / sqrt(4))
        torch.Size([2, 8, 8, 8])
        >>> rotated = net(torch.rot90(x, 1, dims=(-2, -1)))
        >>> torch.allclose(rotated.mean((-2, -1)), features.mean((-2, -1)), atol=1e-5)
        True
    """

    examples = (
        {"group": "C", "order": 4, "width": 4, "depth": 2},
        {"group": "D", "order": 4, "width": 4, "depth": 2},
        {"group": "C", "order": 8, "width": 4, "depth": 1},
        {"group": "SO2", "width": 4, "depth": 2},
        {"group": "O2", "width": 4, "depth": 2},
        {"group": "D", "order": 4, "width": 4, "depth": 2, "restrict_from_stage": 1},
    )
    tiny = {"width": 4, "depth": 2}
    setting_ranges: ClassVar[dict[str, tuple[Any, ...]]] = {
        "group": ("C", "D", "SO2", "O2"),
        "order": (1, 2, 3, 4, 6, 8),
        "width": (4,),
        "depth": (1, 2),
        "convs_per_stage": (1, 2),
        "kernel_size": (3, 5),
        "width_rule": ("params", "channels"),
        "max_frequency": (1, 2, 3),
        "grid_size": (4, 6, 8, 10, 12, 16),
        "restrict_from_stage": (None, 1),
        "blur_size": (1, 3, 5),
        "disk_mask": (False, True),
    }

    def __init__(
        self,
        in_channels: int,
        group: Group = "C",
        order: int = 4,
        width: int = 16,
        depth: int = 3,
        convs_per_stage: int = 2,
        kernel_size: int = 5,
        width_rule: Literal["channels", "params"] = "params",
        max_frequency: int = 3,
        grid_size: int = 16,
        restrict_from_stage: int | None = None,
        blur_size: int = 3,
        disk_mask: bool = False,
    ) -> None:
        super().__init__()
        use_exact_svd_in_escnn()
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
        self.group, self.order, self.grid_size = group, order, grid_size
        # The stages' settings, shared by the encoder and the decoder (see _convolutions).
        self.stage_args = dict(
            convs_per_stage=convs_per_stage,
            kernel_size=kernel_size,
            width_rule=width_rule,
            max_frequency=max_frequency,
        )
        self.width = width
        self.restrict_from_stage = restrict_from_stage
        self.mask = DiskMask() if disk_mask else nn.Identity()

        gspace = self._gspace(group)
        field_type = enn.FieldType(gspace, in_channels * [gspace.trivial_repr])
        self.in_type = field_type
        layers: list[enn.EquivariantModule] = []
        for stage in range(depth):
            if stage == restrict_from_stage:
                # Keep only the rotations: the features become fields of the subgroup, on
                # which the following convolutions are built.
                layers.append(enn.RestrictionModule(field_type, (None, order if group == "D" else -1)))
                field_type = layers[-1].out_type
                gspace = field_type.gspace
            layers.extend(self._convolutions(gspace, field_type, width * 2**stage))
            field_type = layers[-1].out_type
            layers.append(escnn_layers.SymmetricBlurPool(field_type, blur_size))
        if _is_regular(field_type):
            layers.append(enn.GroupPooling(field_type))
        else:
            layers.append(enn.NormPool(field_type))
        # A plain ModuleList, not escnn's SequentialModule: torch's SyncBatchNorm conversion
        # (Lightning's sync_batchnorm) re-adds every child, which SequentialModule refuses.
        self.layers = nn.ModuleList(layers)
        self.out_channels = layers[-1].out_type.size
        read_slice_bounds_on_host(self)

    def _gspace(self, group: Group) -> gspaces.GSpace2D:
        if group == "C":
            return gspaces.rot2dOnR2(self.order)
        if group == "D":
            return gspaces.flipRot2dOnR2(self.order)
        if group == "SO2":
            return gspaces.rot2dOnR2(-1)
        return gspaces.flipRot2dOnR2(-1)

    def _convolutions(
        self, gspace: gspaces.GSpace2D, field_type: enn.FieldType, channels: int
    ) -> list[enn.EquivariantModule]:
        """One stage's ``convs_per_stage`` blocks of ``channels`` StandardCNN-equivalent width."""
        args = self.stage_args
        layers: list[enn.EquivariantModule] = []
        for _ in range(args["convs_per_stage"]):
            block = self._block(
                gspace, field_type, channels, args["kernel_size"], args["width_rule"], args["max_frequency"]
            )
            layers.extend(block)
            field_type = block[-1].out_type
        return layers

    def _block(
        self,
        gspace: gspaces.GSpace2D,
        in_type: enn.FieldType,
        channels: int,
        kernel_size: int,
        width_rule: str,
        max_frequency: int,
    ) -> list[enn.EquivariantModule]:
        if gspace.fibergroup.order() > 0:  # finite group: regular fields, pointwise ReLU
            field_size = gspace.regular_repr.size
            fields = self._fields(channels, field_size, width_rule)
            out_type = enn.FieldType(gspace, fields * [gspace.regular_repr])
            return [
                enn.R2Conv(in_type, out_type, kernel_size, padding=kernel_size // 2, bias=False),
                escnn_layers.InnerBatchNorm(out_type),
                enn.ReLU(out_type, inplace=True),
            ]
        # SO(2)/O(2): band-limited Fourier fields and a nonlinearity sampled on a group grid.
        irreps = gspace.fibergroup.bl_irreps(max_frequency)
        grid = {"N": self.grid_size} if gspace.fibergroup.name == "SO(2)" else {"N": self.grid_size // 2}
        probe = enn.FourierPointwise(gspace, 1, irreps, function="p_relu", **grid)
        fields = self._fields(channels, probe.in_type.size, width_rule)
        activation = escnn_layers.FourierPointwise(gspace, fields, irreps, function="p_relu", **grid)
        return [
            enn.R2Conv(in_type, activation.in_type, kernel_size, padding=kernel_size // 2, bias=False),
            escnn_layers.IIDBatchNorm2d(activation.in_type),
            activation,
        ]

    @staticmethod
    def _fields(channels: int, field_size: int, width_rule: str) -> int:
        per_field = field_size if width_rule == "channels" else math.sqrt(field_size)
        return max(1, round(channels / per_field))

    def forward(self, images: Tensor) -> Tensor:  # (B, C, H, W) -> (B, out_channels, h, w)
        if images.shape[-1] != images.shape[-2]:
            raise SymtrainError(
                f"EquivariantCNN needs square images (got {tuple(images.shape[-2:])}): "
                "rot90 and flips map only a square grid onto itself; crop or pad the data"
            )
        features = enn.GeometricTensor(self.mask(images), self.in_type)
        for layer in self.layers:
            features = layer(features)
        return features.tensor

    def encode(self, images: Tensor) -> Pyramid:
        features, skips = enn.GeometricTensor(self.mask(images), self.in_type), []
        for layer in self.layers.children():
            if isinstance(layer, (enn.GroupPooling, enn.NormPool)):
                break  # the invariant map: a segmentation needs the fields themselves
            if isinstance(layer, escnn_layers.SymmetricBlurPool):
                skips.append(features.tensor)
            features = layer(features)
        return Pyramid(skips, features.tensor, [None] * len(skips))

    def feature_info(self) -> list[Feature]:
        """Each stage's fields before its pooling (``stage{i}_in``), then the last pooling's."""
        pools = [
            layer for layer in self.layers.children() if isinstance(layer, escnn_layers.SymmetricBlurPool)
        ]
        skips = [Feature(f"stage{i + 1}_in", 2**i, pool.in_type.size) for i, pool in enumerate(pools)]
        return [*skips, Feature(f"stage{len(pools)}", 2 ** len(pools), pools[-1].out_type.size)]

    def decoder(self, num_classes: int) -> nn.Module:
        """An :class:`EquivariantDecoder` mirroring the stages, with the same width rule."""
        if self.restrict_from_stage is not None:
            raise SymtrainError(
                "restrict_from_stage has no dense form: a decoder would join fields of two groups; "
                "drop model.backbone.restrict_from_stage for segmentation"
            )
        pools = [
            layer for layer in self.layers.children() if isinstance(layer, escnn_layers.SymmetricBlurPool)
        ]
        field_type = pools[-1].out_type
        gspace = field_type.gspace
        stages = []
        for stage in reversed(range(len(pools))):
            # upsampled fields, then the skip's
            layers = self._convolutions(gspace, field_type + pools[stage].in_type, self.width * 2**stage)
            field_type = layers[-1].out_type
            stages.append(layers)
        scalars = enn.FieldType(gspace, num_classes * [gspace.trivial_repr])
        return EquivariantDecoder(stages, enn.R2Conv(field_type, scalars, kernel_size=1))

    def without_cache(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Without escnn's cache of expanded filters: R2Conv registers ``filter`` and
        ``expanded_bias`` buffers in eval mode and deletes them in train mode (this backbone
        keeps them out of its own state dicts; older checkpoints may hold them). They are
        recognised by their sibling ``weights``, the name escnn gives an R2Conv's parameters."""
        return {
            key: value
            for key, value in state.items()
            if not (
                key.rpartition(".")[2] in ("filter", "expanded_bias")
                and f"{key.rpartition('.')[0]}.weights" in state
            )
        }

    def unsyncable_norms(self) -> tuple[type, ...]:
        # escnn's batch norm for non-regular fields keeps its own statistics, outside torch's
        # _BatchNorm, so torch.nn.SyncBatchNorm.convert_sync_batchnorm cannot reach it.
        return (enn.IIDBatchNorm2d,)

    def layer_strides(self) -> dict[str, int]:
        pools = sum(isinstance(layer, escnn_layers.SymmetricBlurPool) for layer in self.layers.children())
        return {**{f"stage{i + 1}": 2 ** (i + 1) for i in range(pools)}, "invariant": 2**pools}

    def layer_outputs(self, images: Tensor, edit: LayerEdit | None = None) -> dict[str, Tensor]:
        outputs, features = {}, enn.GeometricTensor(self.mask(images), self.in_type)
        for layer in self.layers.children():
            features = layer(features)
            if isinstance(layer, escnn_layers.SymmetricBlurPool):
                name = f"stage{len(outputs) + 1}"
                if edit is not None:
                    features = enn.GeometricTensor(edit(name, features.tensor), features.type)
                outputs[name] = features.tensor
        outputs["invariant"] = features.tensor if edit is None else edit("invariant", features.tensor)
        return outputs

    def _layer_types(self) -> dict[str, enn.FieldType]:
        types: dict[str, enn.FieldType] = {}
        for layer in self.layers.children():
            if isinstance(layer, escnn_layers.SymmetricBlurPool):
                types[f"stage{len(types) + 1}"] = layer.out_type
        types["invariant"] = list(self.layers.children())[-1].out_type
        return types

    def export(self) -> nn.Module:
        """The same network as plain torch modules (no escnn at inference), in eval mode."""
        model = self._frozen_copy()
        return nn.Sequential(model.mask, *map(_export_layer, model.layers.children())).eval()

    def export_encoder(self) -> ExportedEncoder:
        """:meth:`encode` as plain torch modules, in eval mode (for the dense form's export)."""
        model = self._frozen_copy()
        layers = list(model.layers.children())[:-1]  # the invariant pooling is not part of it
        pools = [i for i, layer in enumerate(layers) if isinstance(layer, escnn_layers.SymmetricBlurPool)]
        return ExportedEncoder(model.mask, [_export_layer(layer) for layer in layers], pools).eval()

    @property
    def name(self) -> str:
        group = f"{self.group}{self.order}" if self.group in ("C", "D") else self.group
        subgroup = f"C{self.order}" if self.group == "D" else "SO2"
        restricted = f"_{subgroup}" if self.restrict_from_stage is not None else ""  # D4_C4 = D4|C4
        return f"{type(self).__name__}-{group}{restricted}"

    def declared_symmetries(self) -> Symmetries:
        if self.group in ("C", "D"):
            rotations = self.order
        else:  # the Fourier nonlinearity is exact for the rotations on its grid
            rotations = self.grid_size if self.group == "SO2" else self.grid_size // 2
        declared: Symmetries = {
            Rotation(): "approximate",
            Shift(): "approximate",
            CircularShift(): "approximate",
        }
        if rotations % 4 == 0:
            declared[Rot90()] = "exact"
        if self.group in ("D", "O2") and self.restrict_from_stage is None:
            # escnn's reflection (axis 0) is x.flip(-1); the other mirror is it composed with a
            # half turn, which only an even number of rotations holds (an O(2) grid of 6
            # samples has 3 rotations: its vertical flip is off by about 0.1).
            axes = ("horizontal", "vertical") if rotations % 2 == 0 else ("horizontal",)
            declared.update({Flip(axis): "exact" for axis in axes})
        return declared
