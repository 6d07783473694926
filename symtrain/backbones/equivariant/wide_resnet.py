"""EquivariantWideResNet: the escnn Wide ResNets of Weiler & Cesa (2019), with restriction."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import Tensor, nn

from symtrain._lazy import lazy_module
from symtrain.backbones.base import Backbone, Feature, LayerEdit, Pyramid
from symtrain.backbones.equivariant.action import FieldAction
from symtrain.backbones.equivariant.exactness import check_square, grid_symmetries, strided_grid_problem
from symtrain.backbones.equivariant.filters import _EscnnFilters, use_exact_svd_in_escnn
from symtrain.backbones.equivariant.ops import read_slice_bounds_on_host
from symtrain.backbones.pyramid import PyramidDecoder
from symtrain.errors import SymtrainError
from symtrain.transforms import Symmetries

if TYPE_CHECKING:
    from escnn import gspaces
    from escnn import nn as enn

    from symtrain.backbones.equivariant import layers as escnn_layers
else:  # escnn is imported when the first model is built, not by every symtrain command
    gspaces = lazy_module("escnn.gspaces")
    enn = lazy_module("escnn.nn")
    escnn_layers = lazy_module("symtrain.backbones.equivariant.layers")

STAGES = 3
STEM_CHANNELS = 16  # nStages[0] of the Wide ResNet


class EquivariantWideResNet(_EscnnFilters, FieldAction, Backbone):
    """The Wide ResNet WRN-``depth``-``widen`` (Zagoruyko & Komodakis 2016) built with escnn
    on regular fields of C_N or D_N, as in Weiler & Cesa's ``e2wrn`` models ("General
    E(2)-Equivariant Steerable CNNs", NeurIPS 2019), with their restriction schedules.

    A 5x5 equivariant stem maps the image to 16 regular channels' worth of fields; three stages
    of (depth - 4) / 6 pre-activation wide blocks follow, with 16, 32 and 64 times ``widen``
    channels, the second and third downsampling by strided convolutions. The last block maps to
    invariant (trivial) fields, then batch norm and ReLU: the features the head pools.
    ``restrict`` keeps, before stages 2 and 3, only the subgroup with that many rotations
    (``[4, 1]`` on D8 is the paper's D8D4D1: D8 in stage 1, D4 in stage 2, D1, the
    reflections alone, in stage 3). Convolutions are 5x5 for more than 4 rotations, 3x3
    otherwise, as in the paper.

    ``fixparams`` (the default) scales each stage to ``channels / sqrt(|G|)`` regular fields,
    so the model has about as many parameters as the plain WRN of the same depth and widen
    factor (which is this class with ``group: C, order: 1``): the paper's fair comparison.

    Exactness: the features are exactly invariant to what every stage keeps (rot90 while each
    stage's group holds the quarter turns, the flip of the group's axis while each holds it),
    on images whose strided convolutions sample a grid symmetric about the centre: sides that
    are 1 more than a multiple of :attr:`total_stride` (29, 33, ...).

    Args:
        in_channels: image channels (linked from the data by the CLI).
        depth: 6n + 4 layers (10, 16, 22, 28, ...).
        widen: the widen factor k.
        group: ``C`` (rotations) or ``D`` (rotations and reflections).
        order: N, rotations of the first stage.
        restrict: rotations kept in stages 2 and 3 (each dividing the one before), or None.
        dropout: between each block's convolutions (0.3 in the paper on CIFAR).
        fixparams: parameter-matched widths (above); false keeps ``channels / |G|`` fields.
        initial_stride: stride of the first stage (2 for STL-10 in the paper).

    Examples:
        >>> import torch
        >>> net = EquivariantWideResNet(1, depth=10, widen=1, group="D", order=4).eval()
        >>> x = torch.rand(2, 1, 29, 29)
        >>> features = net(x).mean((-2, -1))
        >>> rotated = net(torch.rot90(x, 1, dims=(-2, -1))).mean((-2, -1))
        >>> torch.allclose(features, rotated, atol=1e-5), net.name
        (True, 'EquivariantWideResNet-D4')
    """

    examples = (
        {"depth": 10, "widen": 1, "group": "D", "order": 4},
        {"depth": 10, "widen": 1, "group": "D", "order": 8, "restrict": [4, 1]},
        {"depth": 10, "widen": 1, "group": "C", "order": 4, "restrict": [4, 2]},
    )
    tiny: ClassVar[dict[str, Any]] = {"depth": 10, "widen": 1, "fixparams": False}
    setting_ranges: ClassVar[dict[str, tuple[Any, ...]]] = {
        "depth": (10,),
        "widen": (1,),
        "group": ("C", "D"),
        "order": (1, 2, 3, 4, 8),
        "restrict": (None, [4, 1], [4, 2], [2, 1], [2, 2], [1, 1]),
        "dropout": (0.0, 0.3),
        "fixparams": (False,),
        "initial_stride": (1, 2),
    }

    def __init__(
        self,
        in_channels: int,
        depth: int = 16,
        widen: int = 8,
        group: Literal["C", "D"] = "D",
        order: int = 8,
        restrict: list[int] | None = None,
        dropout: float = 0.0,
        fixparams: bool = True,
        initial_stride: int = 1,
    ) -> None:
        super().__init__()
        use_exact_svd_in_escnn()
        orders = _schedule(depth, group, order, restrict)
        self.depth, self.widen, self.group, self.orders = depth, widen, group, orders
        self.fixparams, self.initial_stride = fixparams, initial_stride
        blocks = (depth - 4) // 6
        gspace = gspaces.flipRot2dOnR2(order) if group == "D" else gspaces.rot2dOnR2(order)
        self.in_type = enn.FieldType(gspace, in_channels * [gspace.trivial_repr])
        stem_type = self._regular(gspace, STEM_CHANNELS, fixparams=True)  # as the paper, always matched
        self.stem = escnn_layers.wide_conv(self.in_type, stem_type, 5, padding=2)
        field_type, stride = stem_type, initial_stride
        self.restrictions = nn.ModuleDict()
        self.stages = nn.ModuleDict()
        for stage, rotations in enumerate(orders):
            name = f"stage{stage + 1}"
            if stage and rotations != orders[stage - 1]:
                subgroup = (0, rotations) if group == "D" else rotations  # escnn's subgroup id
                self.restrictions[name] = enn.RestrictionModule(field_type, subgroup)
                field_type = self.restrictions[name].out_type
            gspace = field_type.gspace
            channels = STEM_CHANNELS * widen * 2**stage
            kernel_size = 5 if rotations > 4 else 3
            main = self._regular(gspace, channels, fixparams)
            last = stage == STAGES - 1
            out = enn.FieldType(gspace, self._count(channels, 1, gspace, fixparams) * [gspace.trivial_repr])
            layers = []
            for index in range(blocks):
                out_type = out if last and index == blocks - 1 else main
                layers.append(
                    escnn_layers.WideBasic(field_type, main, out_type, stride, kernel_size, dropout)
                )
                field_type, stride = out_type, 1
            self.stages[name] = nn.ModuleList(layers)
            stride = 2
        self.head = nn.ModuleList(
            [escnn_layers.InnerBatchNorm(field_type), enn.ReLU(field_type, inplace=True)]
        )
        self.out_channels = field_type.size
        read_slice_bounds_on_host(self)

    @staticmethod
    def _count(channels: int, field_size: int, gspace: gspaces.GSpace2D, fixparams: bool) -> int:
        """Fields of ``field_size`` for ``channels`` plain channels: the paper's rule (with
        ``fixparams``, ``channels * sqrt(|G|) / field_size``; else ``channels / field_size``)."""
        scale = math.sqrt(gspace.fibergroup.order()) if fixparams else 1.0
        return max(1, int(channels * scale / field_size))

    def _regular(self, gspace: gspaces.GSpace2D, channels: int, fixparams: bool) -> enn.FieldType:
        size = gspace.regular_repr.size
        return enn.FieldType(gspace, self._count(channels, size, gspace, fixparams) * [gspace.regular_repr])

    @property
    def name(self) -> str:
        """``EquivariantWideResNet-D8D4D1``: the group of every stage where they differ."""
        stages = dict.fromkeys(f"{self.group}{rotations}" for rotations in self.orders)
        return f"{type(self).__name__}-{''.join(stages)}"

    def _named_maps(self, images: Tensor, edit: LayerEdit | None = None) -> dict[str, enn.GeometricTensor]:
        check_square(images, type(self).__name__)
        features = self.stem(enn.GeometricTensor(images, self.in_type))
        maps: dict[str, enn.GeometricTensor] = {}
        for name, blocks in (("stem", []), *self.stages.items()):
            if name in self.restrictions:
                features = self.restrictions[name](features)
            for block in (*blocks, *(self.head if name == f"stage{STAGES}" else ())):
                features = block(features)
            if edit is not None:
                features = enn.GeometricTensor(edit(name, features.tensor), features.type)
            maps[name] = features
        return maps

    def forward(self, images: Tensor) -> Tensor:  # (B, C, H, W) -> (B, out_channels, h, w)
        return self._named_maps(images)[f"stage{STAGES}"].tensor

    def feature_info(self) -> list[Feature]:
        """The stem's fields and each stage's (the last after its batch norm and ReLU)."""
        types = [self.stem.out_type, *(blocks[-1].out_type for blocks in self.stages.values())]
        strides = [1, *(self.initial_stride * 2**i for i in range(STAGES))]
        names = ["stem", *self.stages]
        return [Feature(n, s, t.size) for n, s, t in zip(names, strides, types, strict=True)]

    def layer_outputs(self, images: Tensor, edit: LayerEdit | None = None) -> dict[str, Tensor]:
        return {name: maps.tensor for name, maps in self._named_maps(images, edit).items()}

    def _layer_types(self) -> dict[str, enn.FieldType | None]:
        """Fields of the first group only: escnn names a restricted subgroup by its own
        elements (D1 is a "C2" of reflections), so restricted stages are not acted on."""
        first = self.in_type.gspace
        types = {"stem": self.stem.out_type}
        for name, blocks in self.stages.items():
            types[name] = blocks[-1].out_type if blocks[-1].out_type.gspace == first else None
        return types

    def encode(self, images: Tensor) -> Pyramid:
        *finer, bottom = (maps.tensor for maps in self._named_maps(images).values())
        return Pyramid(finer, bottom, [None] * len(finer), tuple(images.shape[-2:]))

    def decoder(self, num_classes: int) -> nn.Module:
        """A plain U-Net decoder over the stem and the stages (:class:`PyramidDecoder`): the
        dense form is equivariant only approximately (:class:`EquivariantCNN`'s is exact)."""
        return PyramidDecoder([feature.channels for feature in self.feature_info()], num_classes)

    def declared_symmetries(self) -> Symmetries:
        # What every stage keeps: escnn's reflection (axis 0) is x.flip(-1); with rot180 in every
        # stage, so is x.flip(-2).
        return grid_symmetries(min(self.orders), reflections=self.group == "D")

    def dense_symmetries(self) -> Symmetries:
        # The decoder is a plain U-Net over the fields (see decoder): rotating the input moves
        # its per-pixel logits by about as much as another image would.
        return {family: "approximate" for family in self.declared_symmetries()}

    def input_size_problem(self, image_size: int) -> str | None:
        return strided_grid_problem(self, image_size)

    def export(self) -> nn.Module:
        """The same network as plain torch modules (no escnn at inference), in eval mode."""
        model = self._frozen_copy()
        layers: list[nn.Module] = [model.stem.export()]
        for blocks in model.stages.values():  # a restriction only relabels fields: nothing to run
            layers += [block.export() for block in blocks]
        layers += [layer.export() for layer in model.head]
        return nn.Sequential(*layers).eval()


def _schedule(depth: int, group: str, order: int, restrict: list[int] | None) -> list[int]:
    """Rotations of each stage's group, checked."""
    if (depth - 4) % 6 or depth < 10:
        raise SymtrainError(f"EquivariantWideResNet depth {depth} is not 6n + 4: use 10, 16, 22 or 28")
    if group not in ("C", "D") or order < 1:
        raise SymtrainError(f"EquivariantWideResNet group {group}{order}: use C or D with order >= 1")
    orders = [order, *(restrict or [order] * (STAGES - 1))]
    if len(orders) != STAGES or any(a % b for a, b in zip(orders, orders[1:], strict=False)):
        raise SymtrainError(
            f"EquivariantWideResNet restrict {restrict}: give the rotations of stages 2 and 3, each "
            f"dividing the one before (e.g. [4, 1] for D8 -> D4 -> D1)"
        )
    return orders
