"""The plain-torch operations of the equivariant backbone: what its escnn layers compute and
what they export to (no escnn needed to import or run them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from kornia.filters import filter2d
from torch import Tensor, nn

from symtrain.transforms import disk_mask

if TYPE_CHECKING:
    from escnn import nn as enn


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
        >>> import torch
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


class WideBasic(nn.Module):
    """A pre-activation wide residual block (Zagoruyko & Komodakis 2016) as plain torch: what
    the escnn block of :class:`~symtrain.backbones.EquivariantWideResNet` exports to."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        self.bn1, self.relu1, self.conv1 = modules["bn1"], modules["relu1"], modules["conv1"]
        self.bn2, self.relu2, self.dropout = modules["bn2"], modules["relu2"], modules["dropout"]
        self.conv2, self.shortcut = modules["conv2"], modules.get("shortcut")

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(activated)))))
        return out + (x if self.shortcut is None else self.shortcut(activated))
