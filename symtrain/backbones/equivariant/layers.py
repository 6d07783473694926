"""symtrain's escnn modules: :func:`~symtrain.backbones.equivariant.symmetric_blur_pool` as a
module, and faster forms of escnn's ``InnerBatchNorm``, ``IIDBatchNorm2d`` and
``FourierPointwise`` (same parameters, buffers and outputs).

Kept apart from the rest of the package because defining them imports escnn, which only
models that use it should pay for (:mod:`~symtrain.backbones.equivariant.network` imports this
module lazily).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from escnn import nn as enn
from kornia.filters.kernels import get_pascal_kernel_2d
from torch import Tensor, nn

from symtrain.backbones.equivariant import ops
from symtrain.backbones.equivariant.ops import (
    BlurPool,
    fourier_pointwise,
    read_slice_bounds_on_host,
    symmetric_blur_pool,
)


class SymmetricBlurPool(enn.EquivariantModule):
    """Anti-aliased stride-2 pooling for any field type.

    Blurring and subsampling act on each channel alike, so they commute with any
    representation on the channels: this pools regular and Fourier fields the same way,
    which escnn's pointwise pooling modules cannot.

    Args:
        in_type: the field type of the features.
        filter_size: side of the binomial low-pass filter (odd).
    """

    def __init__(self, in_type: enn.FieldType, filter_size: int = 3) -> None:
        super().__init__()
        self.in_type = self.out_type = in_type
        self.register_buffer("kernel", get_pascal_kernel_2d(filter_size, norm=True))

    def forward(self, input: enn.GeometricTensor) -> enn.GeometricTensor:
        return enn.GeometricTensor(symmetric_blur_pool(input.tensor, self.kernel), self.out_type)

    def evaluate_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*input_shape[:2], *((size + 1) // 2 for size in input_shape[2:]))

    def export(self) -> nn.Module:
        return BlurPool(self.kernel.clone())


class InnerBatchNorm(enn.InnerBatchNorm):
    """escnn's ``InnerBatchNorm`` (same statistics, parameters and state dict), faster when
    one contiguous group of equal-size fields fills every channel, as in each regular-field
    layer here. escnn normalises each group into a fresh output tensor (a copy of the whole
    map); here the batch norm's output is the layer's output. In eval mode it is the
    per-channel affine map that escnn's export computes, run by the 2-D batch norm kernel
    (escnn runs a 3-D one over a (B, fields, size, H, W) view, which is slower)."""

    def __init__(self, in_type: enn.FieldType, **kwargs: Any) -> None:
        super().__init__(in_type, **kwargs)
        read_slice_bounds_on_host(self)  # its forward compares them as ints, built alone too

    def forward(self, input: enn.GeometricTensor) -> enn.GeometricTensor:
        x = input.tensor
        (size, contiguous), *others = self._contiguous.items()  # field size -> contiguous?
        if others or not contiguous or getattr(self, f"indices_{size}") != (0, x.shape[1]):
            return super().forward(input)
        norm = getattr(self, f"batch_norm_[{size}]")
        if self.training or not norm.track_running_stats:
            out = norm(x.view(x.shape[0], -1, size, *x.shape[2:])).view_as(x)
        else:

            def per_channel(values: Tensor | None) -> Tensor | None:
                return None if values is None else values.repeat_interleave(size)

            mean, var = per_channel(norm.running_mean), per_channel(norm.running_var)
            weight, bias = per_channel(norm.weight), per_channel(norm.bias)
            out = F.batch_norm(x, mean, var, weight, bias, False, 0.0, norm.eps)
        return enn.GeometricTensor(out, self.out_type, input.coords)


class FourierPointwise(enn.FourierPointwise):
    """escnn's ``FourierPointwise`` computed by :func:`fourier_pointwise` (no transposed copies)."""

    def forward(self, input: enn.GeometricTensor) -> enn.GeometricTensor:
        out = fourier_pointwise(input.tensor, self.A, self.Ainv, self._function, self.rho.size)
        return enn.GeometricTensor(out, self.out_type, input.coords)


class IIDBatchNorm2d(enn.IIDBatchNorm2d):
    """escnn's ``IIDBatchNorm2d`` (same statistics, parameters and state dict) without its two
    costs when one contiguous group of equal fields fills every channel, as in each Fourier
    layer here: the copy into a fresh output tensor, and the ``torch.allclose`` assertions on
    the running statistics at every training step (host syncs)."""

    def forward(self, input: enn.GeometricTensor) -> enn.GeometricTensor:
        x = input.tensor
        (name, size), *others = self._sizes
        bounds = getattr(self, f"{self._escape_name(name)}_indices")  # [start, end] if contiguous
        if others or not self._contiguous[name] or list(bounds) != [0, x.shape[1]]:
            return super().forward(input)
        fields = x.view(x.shape[0], -1, size, *x.shape[2:])  # (B, fields, size, H, W)
        if self.training:
            self.num_batches_tracked += 1
        if self.training or not self.track_running_stats:
            means, variances = self._estimate_stats(fields, name)
            if self.training and self.track_running_stats:
                if self.momentum is None:  # cumulative moving average
                    factor = 1.0 / self.num_batches_tracked.item()
                else:
                    factor = self.momentum
                running_mean, running_var = self._get_running_stats(name)
                running_var.mul_(1 - factor).add_(factor * variances)
                if running_mean is not None:
                    running_mean.mul_(1 - factor).add_(factor * means)
        else:
            means, variances = self._get_running_stats(name)

        def per_field(values: Tensor) -> Tensor:  # (fields, k) -> broadcast over (B, ., ., H, W)
            return values.view(1, *values.shape, *(1,) * (x.dim() - 2))

        prefix = self._escape_name(name)
        if means is not None:
            fields = fields - per_field(means)
        scales = (getattr(self, f"{prefix}_weight") if self.affine else 1.0) / (variances + self.eps).sqrt()
        fields = fields * per_field(scales)
        if self.affine and self._has_trivial[name]:
            bias = getattr(self, f"{prefix}_bias")
            change_of_basis = getattr(self, f"{prefix}_change_of_basis")
            fields = fields + per_field(bias @ change_of_basis.T)
        return enn.GeometricTensor(fields.view_as(x), self.out_type, input.coords)


class WideBasic(enn.EquivariantModule):
    """The pre-activation wide residual block of Weiler & Cesa's equivariant Wide ResNets:
    batch norm, ReLU, convolution, batch norm, ReLU, dropout, convolution (strided where the
    stage downsamples), plus the input or, where the stride or the field type changes, a 1x1
    convolution of the activated input.

    Args:
        in_type: fields entering the block.
        inner_type: fields between its two convolutions.
        out_type: fields leaving it.
        stride: of the second convolution and the shortcut.
        kernel_size: of both convolutions (odd).
        dropout: probability of zeroing a field's channels (pointwise).
    """

    def __init__(
        self,
        in_type: enn.FieldType,
        inner_type: enn.FieldType,
        out_type: enn.FieldType,
        stride: int,
        kernel_size: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.in_type, self.out_type = in_type, out_type
        padding = kernel_size // 2
        self.bn1 = InnerBatchNorm(in_type)
        self.relu1 = enn.ReLU(in_type, inplace=True)
        self.conv1 = wide_conv(in_type, inner_type, kernel_size, padding=padding)
        self.bn2 = InnerBatchNorm(inner_type)
        self.relu2 = enn.ReLU(inner_type, inplace=True)
        self.dropout = enn.PointwiseDropout(inner_type, p=dropout)
        self.conv2 = wide_conv(inner_type, out_type, kernel_size, padding=padding, stride=stride)
        self.shortcut = None
        if stride != 1 or in_type != out_type:
            self.shortcut = wide_conv(in_type, out_type, 1, stride=stride)

    def forward(self, x: enn.GeometricTensor) -> enn.GeometricTensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(activated)))))
        shortcut = x if self.shortcut is None else self.shortcut(activated)
        return enn.GeometricTensor(out.tensor + shortcut.tensor, self.out_type, x.coords)

    def evaluate_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.conv2.evaluate_output_shape(self.conv1.evaluate_output_shape(input_shape))

    def export(self) -> nn.Module:
        return ops.WideBasic({name: module.export() for name, module in self.named_children()})


# The e2wrn models' kernel basis (e2cnn_experiments, models/utils.py: ``sigma=0.45``, ``F=1``):
# Gaussian rings of radial width 0.45 at every radius (the centre's too, where escnn's default
# is 0.005 at the centre, 0.6 between and 0.4 at the edge), frequencies up to pi per pixel of
# radius (``frequencies_cutoff = F * pi``).
RING_WIDTH = 0.45
FREQUENCIES_PER_PIXEL = math.pi


def wide_conv(in_type: enn.FieldType, out_type: enn.FieldType, kernel_size: int, **kwargs: Any) -> enn.R2Conv:
    """An equivariant convolution with the e2wrn models' kernel basis (rings of width 0.45 at
    every radius, frequencies up to pi per pixel of radius), which for the trivial group spans
    8 of a 3x3 kernel's 9 dimensions (escnn's default basis spans 6), initialised by
    :func:`he_init_scales`."""
    conv = enn.R2Conv(
        in_type,
        out_type,
        kernel_size,
        bias=False,
        sigma=RING_WIDTH,
        frequencies_cutoff=FREQUENCIES_PER_PIXEL,
        initialize=False,
        **kwargs,
    )
    with torch.no_grad():
        conv.weights.copy_(he_init_scales(conv.basisexpansion) * torch.randn_like(conv.weights))
    return conv


def he_init_scales(manager: Any) -> Tensor:
    """The scale of each weight in escnn's generalised He initialisation
    (``escnn.nn.init.generalized_he_init``: 1 / sqrt(distinct input irreps of the weight's output
    irrep x basis elements from its input irrep into that output irrep)), computed per pair of
    field representations and repeated over the pair's fields.

    escnn computes it in a Python loop over every weight, about 3 minutes for a WRN-16-8 on the
    CPU; every field pair of the same two representations has the same scales, in the same
    order (escnn's weight layout: output field, input field, basis element).
    """
    blocks = {
        pair: list(getattr(manager, f"block_expansion_{manager._escape_pair(pair)}").get_basis_info())
        for pair in manager._representations_pairs
    }
    basis_count: dict[tuple, int] = defaultdict(int)  # (out repr, out irrep index, in irrep) -> count
    for (in_repr, out_repr), attrs in blocks.items():
        for attr in attrs:
            basis_count[(out_repr, attr["out_irrep_idx"], attr["in_irrep"])] += manager._in_count[in_repr]
    distinct_inputs = Counter((out_repr, index) for out_repr, index, _ in basis_count)
    scales = torch.empty(manager.dimension())
    for (in_repr, out_repr), attrs in blocks.items():
        start, end = manager._weights_ranges[(in_repr, out_repr)]
        per_block = torch.tensor(
            [
                1.0
                / math.sqrt(
                    distinct_inputs[(out_repr, a["out_irrep_idx"])]
                    * basis_count[(out_repr, a["out_irrep_idx"], a["in_irrep"])]
                )
                for a in attrs
            ]
        )
        scales[start:end] = per_block.repeat(manager._out_count[out_repr] * manager._in_count[in_repr])
    return scales
