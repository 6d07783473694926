"""Group-equivariant CNNs built with escnn: symmetry by construction.

Every layer commutes with the action of a group G of rotations (and reflections) of the plane:
C_N and D_N act on regular fields with pointwise ReLUs; SO(2) and O(2) act on band-limited
Fourier fields with Fourier-sampled ReLUs. An invariant map (group pooling or norm pooling)
at the end hands the head features that do not change under G.

On a pixel grid only rot90 and flips are exact, and only if every subsampling step keeps the
sampling grid symmetric under them. :func:`symmetric_blur_pool` subsamples with a grid that is
symmetric for *every* square size (odd sizes keep pixels 0, 2, ..., S-1; even sizes average
2x2 blocks), so C4/D4 models are exactly invariant at 28, 29, 32, 33 or any other size.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from kornia.filters import filter2d
from torch import Tensor, nn

from symtrain._lazy import lazy_module
from symtrain.backbones.base import Backbone, LayerEdit, Pyramid
from symtrain.errors import SymtrainError
from symtrain.transforms import Exactness, TransformFamily, disk_mask

if TYPE_CHECKING:
    from escnn import gspaces
    from escnn import nn as enn

    from symtrain.backbones import escnn_layers
else:  # escnn is imported when the first EquivariantCNN is built, not by every symtrain command
    gspaces = lazy_module("escnn.gspaces")
    enn = lazy_module("escnn.nn")
    escnn_layers = lazy_module("symtrain.backbones.escnn_layers")

Group = Literal["C", "D", "SO2", "O2"]


def use_exact_svd_in_escnn() -> None:
    """Make escnn solve for kernel bases with scipy's exact SVD, its own fallback.

    Whenever scikit-learn is importable, escnn uses scikit-learn's *randomized* SVD instead: an
    approximation, which recent scikit-learn (1.9, for one) refuses outright on the ``np.matrix``
    escnn passes it (``TypeError: np.matrix is not supported``), so a D_N model could not be
    built on a machine that merely has scikit-learn installed.
    """
    from escnn.group import _numerical

    _numerical.randomized_svd = None


def symmetric_blur_pool(features: Tensor, kernel: Tensor) -> Tensor:
    """Low-pass filter, then halve the resolution on a grid symmetric under rot90 and flips.

    Args:
        features: (B, C, S, S) feature map.
        kernel: (k, k) normalised low-pass kernel, k odd.

    Returns:
        (B, C, ceil(S / 2), ceil(S / 2)).
    """
    # kornia's filter2d pads symmetrically (zeros), so the blur itself commutes with rot90.
    blurred = filter2d(features, kernel[None], border_type="constant")
    if features.shape[-1] % 2 == 1:
        return blurred[..., ::2, ::2]  # pixels 0, 2, ..., S-1: symmetric about the centre
    return F.avg_pool2d(blurred, 2)  # block centres 0.5, 2.5, ..., S-1.5: symmetric too


class BlurPool(nn.Module):
    """Plain-torch :func:`symmetric_blur_pool`, what :class:`SymmetricBlurPool` exports to."""

    def __init__(self, kernel: Tensor) -> None:
        super().__init__()
        self.register_buffer("kernel", kernel)

    def forward(self, features: Tensor) -> Tensor:
        return symmetric_blur_pool(features, self.kernel)


def split_fields(features: Tensor, field_size: int) -> Tensor:
    """View (B, F * d, ...) features as (B, F, d, ...): one row per field of size d."""
    batch, channels, *spatial = features.shape
    return features.view(batch, channels // field_size, field_size, *spatial)


def fourier_pointwise(features: Tensor, A: Tensor, Ainv: Tensor, function: Any, field_size: int) -> Tensor:
    """Sample each Fourier field on a group grid (``A``: grid x field), apply ``function``
    pointwise, project back (``Ainv``). On (B, fields, size, H*W) both maps are batched matrix
    products with no transposed copy (escnn's einsums copy the map twice)."""
    fields = split_fields(features, field_size).flatten(3)
    return (Ainv @ function(A @ fields)).view(features.shape)


class FourierActivation(nn.Module):
    """Plain-torch export of :class:`escnn.nn.FourierPointwise`: sample the fields on a group
    grid, apply the nonlinearity pointwise, and project back (escnn has no export for it)."""

    def __init__(self, module: enn.FourierPointwise) -> None:
        super().__init__()
        self.field_size = module.rho.size
        self.register_buffer("A", module.A.clone())
        self.register_buffer("Ainv", module.Ainv.clone())
        self.function = module._function

    def forward(self, features: Tensor) -> Tensor:
        return fourier_pointwise(features, self.A, self.Ainv, self.function, self.field_size)


class NormPool(nn.Module):
    """Plain-torch export of :class:`escnn.nn.NormPool` for fields of one size."""

    def __init__(self, field_size: int) -> None:
        super().__init__()
        self.field_size = field_size

    def forward(self, features: Tensor) -> Tensor:
        return split_fields(features, self.field_size).norm(dim=2)


class GroupMaxPool(nn.Module):
    """Plain-torch export of :class:`escnn.nn.GroupPooling`: the maximum over each regular field
    (escnn's own export still needs escnn at inference)."""

    def __init__(self, field_size: int) -> None:
        super().__init__()
        self.field_size = field_size

    def forward(self, features: Tensor) -> Tensor:
        return split_fields(features, self.field_size).amax(dim=2)


class DiskMask(nn.Module):
    """Zero everything outside the disk inscribed in the image, with a one-pixel soft edge.

    Continuous rotations move the corners out of the frame and new content in; masking to the
    disk makes the input's support rotation invariant. escnn's ``MaskModule`` needs the image
    size when the model is built; this computes the mask for whatever size arrives.
    """

    def forward(self, images: Tensor) -> Tensor:  # (B, C, H, W)
        return disk_mask(images)


def read_slice_bounds_on_host(root: nn.Module) -> None:
    """escnn's batch norm and group/norm pooling keep each contiguous group of fields' channel
    range as a 2-element index buffer and slice with its elements, which on a GPU reads the
    device: a host sync for every such layer at every step. The ranges are constants of the
    field types, so the modules under ``root`` read them as Python ints, shadowing the buffers
    (``__dict__`` comes before ``nn.Module.__getattr__``); the buffers stay, so state dicts,
    device moves and DDP's buffer broadcast are unchanged."""
    for module in root.modules():
        for key, contiguous in getattr(module, "_contiguous", {}).items():
            for name in (f"indices_{key}", f"in_indices_{key}", f"out_indices_{key}"):
                if contiguous and name in module._buffers:
                    module.__dict__[name] = tuple(module._buffers[name].tolist())


def _drop_cached_filters(state: dict[str, Any], prefix: str) -> None:
    for key in [k for k in state if k.startswith(prefix) and k.endswith((".filter", ".expanded_bias"))]:
        del state[key]


class _EscnnFilters(nn.Module):
    """Holds escnn convolutions whose filter cache stays out of state dicts.

    escnn caches expanded filters as buffers in eval mode only, so a state dict's keys would
    depend on the mode it was saved in. The cache is kept out of state dicts (non-persistent),
    dropped from incoming ones, and rebuilt from newly loaded weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_state_dict_pre_hook(lambda module, prefix, keep_vars: module._cache_is_not_state())
        self._register_load_state_dict_pre_hook(self._before_load)
        self.register_load_state_dict_post_hook(lambda module, keys: module._refresh_filters())

    def _frozen_copy(self) -> _EscnnFilters:
        """A deep copy in eval mode (escnn's filters expanded once), this module left as it was."""
        training = self.training
        self.train(True)  # drops escnn's filter cache, which may hold an autograd graph
        model = copy.deepcopy(self).eval()
        self.train(training)
        return model

    def train(self, mode: bool = True) -> _EscnnFilters:
        # escnn expands and caches the filters when switching to eval mode; without no_grad the
        # cache would hold an autograd graph (memory, and deepcopy refuses non-leaf tensors).
        with torch.no_grad():
            return super().train(mode)

    def _before_load(self, state: dict[str, Any], prefix: str, *args: Any) -> None:
        _drop_cached_filters(state, prefix)
        self._cache_is_not_state()

    def _cache_is_not_state(self) -> None:
        for module in self.modules():
            if isinstance(module, enn.R2Conv):
                module._non_persistent_buffers_set.update({"filter", "expanded_bias"})

    def _refresh_filters(self) -> None:
        for module in self.modules():
            if isinstance(module, enn.R2Conv) and not module.training:
                module.train(True)
                with torch.no_grad():
                    module.train(False)


def symmetric_upsample(features: Tensor, size: int) -> Tensor:
    """Undo :func:`symmetric_blur_pool`'s halving: bilinear interpolation back to side ``size``
    on the same symmetric grid, so it commutes with rot90 and flips as the pooling does.

    escnn's ``R2Upsampling`` fixes its scale when the model is built, but which grid a map of
    side S came from (2S, block centres, or 2S - 1, kept pixels) depends on the input size;
    interpolation acts on every channel alike, so it commutes with any field representation.

    Args:
        features: (B, C, S, S) feature map.
        size: the side before pooling, 2S or 2S - 1.

    Returns:
        (B, C, size, size).

    Examples:
        >>> x = torch.rand(1, 2, 5, 5)
        >>> up = symmetric_upsample(x, 9)
        >>> torch.equal(up[..., ::2, ::2], x)  # the kept pixels come back unchanged
        True
        >>> rotated = symmetric_upsample(x.rot90(1, (-2, -1)), 10)
        >>> torch.allclose(rotated, symmetric_upsample(x, 10).rot90(1, (-2, -1)))
        True
    """
    side = features.shape[-1]
    if size == 2 * side:  # block centres 0.5, 2.5, ...: align_corners=False maps them there
        return F.interpolate(features, scale_factor=2, mode="bilinear", align_corners=False)
    # pixels 0, 2, ..., size - 1 were kept: align_corners=True maps them back in place
    return F.interpolate(features, size=(size, size), mode="bilinear", align_corners=True)


def _export_layer(layer: enn.EquivariantModule) -> nn.Module:
    """One escnn layer as plain torch, including the ones escnn cannot export itself."""
    if isinstance(layer, enn.FourierPointwise):
        return FourierActivation(layer)
    if isinstance(layer, enn.NormPool):
        return NormPool(layer.in_type.representations[0].size)
    if isinstance(layer, enn.GroupPooling):
        return GroupMaxPool(layer.in_type.representations[0].size)
    return layer.export()


class _SymmetricUNetDecoder(nn.Module):
    """Per stage, deepest first: upsample on the pooling's symmetric grid, concatenate the
    skip, apply the stage; then the classifier. Subclasses say how a stage and the classifier
    run on plain tensors."""

    stages: nn.ModuleList
    classifier: nn.Module

    def _stage(self, index: int, features: Tensor) -> Tensor:
        raise NotImplementedError

    def _classify(self, features: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, pyramid: Pyramid) -> Tensor:  # -> (B, num_classes, H, W)
        x = pyramid.bottom
        depth = len(pyramid.skips)
        for index in range(len(self.stages)):
            skip = pyramid.skips[depth - 1 - index]
            x = self._stage(index, torch.cat([symmetric_upsample(x, skip.shape[-1]), skip], dim=1))
        return self._classify(x)


class EquivariantDecoder(_EscnnFilters, _SymmetricUNetDecoder):
    """The decoder of an equivariant U-Net: per stage, deepest first, upsample on the pooling's
    symmetric grid, concatenate the skip's fields, apply the stage's equivariant blocks; then a
    1x1 convolution to scalar (trivial) fields, so the logits of every pixel move with the
    image and nothing else changes.

    Built by :meth:`EquivariantCNN.decoder`.
    """

    def __init__(self, stages: list[list[enn.EquivariantModule]], classifier: enn.R2Conv) -> None:
        super().__init__()
        self.stages = nn.ModuleList(nn.ModuleList(stage) for stage in stages)
        self.classifier = classifier
        read_slice_bounds_on_host(self)

    def _stage(self, index: int, features: Tensor) -> Tensor:
        stage = self.stages[index]
        geometric = enn.GeometricTensor(features, stage[0].in_type)
        for layer in stage:
            geometric = layer(geometric)
        return geometric.tensor

    def _classify(self, features: Tensor) -> Tensor:
        return self.classifier(enn.GeometricTensor(features, self.classifier.in_type)).tensor

    def export(self) -> ExportedDecoder:
        """The same decoder as plain torch modules, in eval mode."""
        model = self._frozen_copy()
        stages = [nn.Sequential(*map(_export_layer, stage)) for stage in model.stages]
        return ExportedDecoder(stages, model.classifier.export()).eval()


class ExportedDecoder(_SymmetricUNetDecoder):
    """Plain-torch :class:`EquivariantDecoder` (from its ``export()``)."""

    def __init__(self, stages: list[nn.Module], classifier: nn.Module) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.classifier = classifier

    def _stage(self, index: int, features: Tensor) -> Tensor:
        return self.stages[index](features)

    def _classify(self, features: Tensor) -> Tensor:
        return self.classifier(features)


class ExportedEncoder(nn.Module):
    """Plain-torch :meth:`EquivariantCNN.encode` (from ``export_encoder()``)."""

    def __init__(self, mask: nn.Module, layers: list[nn.Module], pools: list[int]) -> None:
        super().__init__()
        self.mask = mask
        self.layers = nn.ModuleList(layers)
        self.pools = set(pools)

    def encode(self, images: Tensor) -> Pyramid:
        features, skips = self.mask(images), []
        for index, layer in enumerate(self.layers):
            if index in self.pools:
                skips.append(features)
            features = layer(features)
        return Pyramid(skips, features, [None] * len(skips))

    forward = encode


class EquivariantCNN(_EscnnFilters, Backbone):
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
        >>> net = EquivariantCNN(in_channels=1, group="C", order=4, width=8, depth=2)
        >>> x = torch.rand(2, 1, 29, 29)
        >>> features = net.eval()(x)
        >>> features.shape  # 8 C4 fields in the last stage (16 StandardCNN channels / sqrt(4))
        torch.Size([2, 8, 8, 8])
        >>> rotated = net(torch.rot90(x, 1, dims=(-2, -1)))
        >>> torch.allclose(rotated.mean((-2, -1)), features.mean((-2, -1)), atol=1e-5)
        True
    """

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
        if restrict_from_stage is not None and (group in ("C", "SO2") or not 0 < restrict_from_stage < depth):
            raise SymtrainError(
                f"restrict_from_stage={restrict_from_stage} needs a D or O2 group "
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
        self._representations: dict[tuple, Tensor] = {}

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

    def act_on_layer(
        self, name: str, family: TransformFamily, element: Tensor, features: Tensor
    ) -> Tensor | None:
        """Spatial action, then the fields' representation on the channels (pure torch: escnn's
        ``GeometricTensor.transform`` goes through numpy on the CPU)."""
        spatial = family.act_on_features(features, element, self.layer_strides()[name])
        if spatial is None or family.name not in ("rot90", "flip"):
            return spatial  # translations act on the grid only
        field_type = self._layer_types()[name]
        group_element = _group_element(field_type.gspace.fibergroup, family, element)
        if group_element is None:
            return None
        key = (name, family.name, tuple(element.tolist()), str(features.device), features.dtype)
        if key not in self._representations:
            matrix = field_type.representation(group_element)
            self._representations[key] = torch.as_tensor(matrix, dtype=features.dtype, device=features.device)
        return torch.einsum("oc,bc...->bo...", self._representations[key], spatial)

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

    def declared_symmetries(self) -> dict[str, Exactness]:
        if self.group in ("C", "D"):
            rotations = self.order
        else:  # the Fourier nonlinearity is exact for the rotations on its grid
            rotations = self.grid_size if self.group == "SO2" else self.grid_size // 2
        declared: dict[str, Exactness] = {
            "rotation": "approximate",
            "shift": "approximate",
            "circular_shift": "approximate",
        }
        if rotations % 4 == 0:
            declared["rot90"] = "exact"
        reflections = self.group in ("D", "O2") and self.restrict_from_stage is None
        if reflections and (self.group == "O2" or self.order % 2 == 0):
            declared["flip"] = "exact"  # with rot180 in G, both mirror axes are in G
        return declared


def _group_element(group: Any, family: TransformFamily, element: Tensor) -> Any:
    """The element of an escnn group that acts like ``family``'s ``element`` on the pixel grid,
    or None when the group does not contain it. ``torch.rot90(x, 1, (-2, -1))`` is escnn's
    rotation by +90 degrees and ``x.flip(-1)`` its reflection (1, 0), both checked in tests."""
    quarter_turns = int(element[0]) % 4 if family.name == "rot90" else 0
    flip = family.name == "flip" and bool(element[0])
    if flip and getattr(family, "axis", "horizontal") == "vertical":
        quarter_turns = 2  # a vertical flip is the horizontal one followed by a half turn
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
