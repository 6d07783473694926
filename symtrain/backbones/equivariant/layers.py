"""symtrain's escnn modules: :func:`~symtrain.backbones.equivariant.symmetric_blur_pool` as a
module, and faster forms of escnn's ``InnerBatchNorm``, ``IIDBatchNorm2d`` and
``FourierPointwise`` (same parameters, buffers and outputs).

Kept apart from the rest of the package because defining them imports escnn, which only
models that use it should pay for (:mod:`~symtrain.backbones.equivariant.network` imports this
module lazily).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from escnn import nn as enn
from kornia.filters.kernels import get_pascal_kernel_2d
from torch import Tensor, nn

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
