"""The escnn module of :func:`~symtrain.backbones.equivariant.symmetric_blur_pool`.

Kept apart from :mod:`symtrain.backbones.equivariant` because defining it imports escnn, which
only models that use it should pay for.
"""

from __future__ import annotations

from escnn import nn as enn
from kornia.filters.kernels import get_pascal_kernel_2d
from torch import nn

from symtrain.backbones.equivariant import BlurPool, symmetric_blur_pool


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
