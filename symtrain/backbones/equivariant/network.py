"""EquivariantCNN: the escnn backbone (stages, invariant map, dense form, layer-wise action).

The class holds the network and its views (forward, the U-Net encoder, the named layers, the
plain-torch export); its sibling modules build and judge it: :mod:`.groups` (groups, settings
and field counts), :mod:`.blocks` (blocks, stages, invariant map, decoder), :mod:`.exactness`
(declared symmetries, square images) and :mod:`.filters` (escnn's filter cache).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import Tensor, nn

from symtrain._lazy import lazy_module
from symtrain.backbones.base import Backbone, Feature, LayerEdit, Pyramid
from symtrain.backbones.equivariant.action import FieldAction
from symtrain.backbones.equivariant.blocks import StageBuilder
from symtrain.backbones.equivariant.decoder import EquivariantDecoder, ExportedEncoder, _export_layer
from symtrain.backbones.equivariant.exactness import check_square, grid_symmetries
from symtrain.backbones.equivariant.filters import _EscnnFilters, use_exact_svd_in_escnn, without_filter_cache
from symtrain.backbones.equivariant.groups import (
    Group,
    check_settings,
    group_label,
    gspace_of,
    rotations_on_grid,
)
from symtrain.backbones.equivariant.ops import DiskMask, read_slice_bounds_on_host
from symtrain.errors import SymtrainError
from symtrain.transforms import Symmetries

if TYPE_CHECKING:
    from escnn import nn as enn

    from symtrain.backbones.equivariant import layers as escnn_layers
else:  # escnn is imported when the first EquivariantCNN is built, not by every symtrain command
    enn = lazy_module("escnn.nn")
    escnn_layers = lazy_module("symtrain.backbones.equivariant.layers")

__all__ = ["EquivariantCNN", "Group"]  # Group lives in .groups; importable from here as before


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
        check_settings(group, order, depth, kernel_size, blur_size, restrict_from_stage)
        self.group, self.order, self.grid_size = group, order, grid_size
        # The stages' settings, shared by the encoder and the decoder (see _stages).
        self.stage_args = dict(
            convs_per_stage=convs_per_stage,
            kernel_size=kernel_size,
            width_rule=width_rule,
            max_frequency=max_frequency,
        )
        self.width = width
        self.restrict_from_stage = restrict_from_stage
        self.mask = DiskMask() if disk_mask else nn.Identity()

        gspace = gspace_of(group, order)
        self.in_type = enn.FieldType(gspace, in_channels * [gspace.trivial_repr])
        subgroup = (None, order if group == "D" else -1)  # the rotations, kept from restrict_from_stage
        layers = self._stages().encoder(self.in_type, width, depth, blur_size, restrict_from_stage, subgroup)
        # A plain ModuleList, not escnn's SequentialModule: torch's SyncBatchNorm conversion
        # (Lightning's sync_batchnorm) re-adds every child, which SequentialModule refuses.
        self.layers = nn.ModuleList(layers)
        self.out_channels = layers[-1].out_type.size
        read_slice_bounds_on_host(self)

    def _stages(self) -> StageBuilder:
        """What builds the stages of the encoder and the decoder alike."""
        return StageBuilder(**self.stage_args, grid_size=self.grid_size)

    def _pools(self) -> list[escnn_layers.SymmetricBlurPool]:
        """Each stage's last layer, its anti-aliased pooling."""
        return [
            layer for layer in self.layers.children() if isinstance(layer, escnn_layers.SymmetricBlurPool)
        ]

    def forward(self, images: Tensor) -> Tensor:  # (B, C, H, W) -> (B, out_channels, h, w)
        check_square(images, "EquivariantCNN")
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
        pools = self._pools()
        skips = [Feature(f"stage{i + 1}_in", 2**i, pool.in_type.size) for i, pool in enumerate(pools)]
        return [*skips, Feature(f"stage{len(pools)}", 2 ** len(pools), pools[-1].out_type.size)]

    def decoder(self, num_classes: int) -> EquivariantDecoder:
        """An :class:`EquivariantDecoder` mirroring the stages, with the same width rule."""
        if self.restrict_from_stage is not None:
            raise SymtrainError(
                "restrict_from_stage has no dense form: a decoder would join fields of two groups; "
                "drop model.backbone.restrict_from_stage for segmentation"
            )
        return self._stages().decoder(self._pools(), self.width, num_classes)

    def without_cache(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Without escnn's cache of expanded filters (:func:`.filters.without_filter_cache`): this
        backbone keeps it out of its own state dicts; older checkpoints may hold it."""
        return without_filter_cache(state)

    def unsyncable_norms(self) -> tuple[type, ...]:
        # escnn's batch norm for non-regular fields keeps its own statistics, outside torch's
        # _BatchNorm, so torch.nn.SyncBatchNorm.convert_sync_batchnorm cannot reach it.
        return (enn.IIDBatchNorm2d,)

    def layer_strides(self) -> dict[str, int]:
        pools = len(self._pools())
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
        types = {f"stage{i + 1}": pool.out_type for i, pool in enumerate(self._pools())}
        return {**types, "invariant": list(self.layers.children())[-1].out_type}

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
        """``EquivariantCNN-C4``, ``EquivariantCNN-O2``; ``EquivariantCNN-D4_C4`` when restricted (D4|C4)."""
        restricted = self.restrict_from_stage is not None
        return f"{type(self).__name__}-{group_label(self.group, self.order, restricted)}"

    def declared_symmetries(self) -> Symmetries:
        # The Fourier nonlinearity of SO(2)/O(2) is exact for the rotations on its grid; a
        # restriction drops the reflections.
        rotations = rotations_on_grid(self.group, self.order, self.grid_size)
        reflections = self.group in ("D", "O2") and self.restrict_from_stage is None
        return grid_symmetries(rotations, reflections)
