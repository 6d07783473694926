"""A U-Net decoder over any declared feature pyramid (strides need not be 2, 4, 8, ...)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from symtrain.backbones.base import Pyramid


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class PyramidDecoder(nn.Module):
    """From the coarsest map up: upsample (bilinear) to the next finer map's size, concatenate
    it, and one conv-BN-ReLU to that map's channels; after the finest, upsample to the input's
    size and a 1x1 convolution to per-pixel logits. Reads only the maps' channels, finest first
    (as timm's ``feature_info.channels()``), so it serves any encoder whatever its strides (a
    ResNet's first map has stride 2, its second 4; a ViT's are all 16).

    Args:
        channels: channels of the pyramid's maps, finest first; the last is the bottom.
        num_classes: logits per pixel.

    Examples:
        >>> decoder = PyramidDecoder([8, 16, 32], num_classes=3)
        >>> maps = [torch.rand(2, c, 33 // s + 1, 33 // s + 1) for c, s in ((8, 2), (16, 4), (32, 8))]
        >>> decoder(Pyramid(maps[:-1], maps[-1], [None, None], (33, 33))).shape
        torch.Size([2, 3, 33, 33])
    """

    def __init__(self, channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        *finer, coarsest = channels
        self.stages = nn.ModuleList()
        current = coarsest
        for skip in reversed(finer):
            self.stages.append(_conv_bn_relu(current + skip, skip))
            current = skip
        self.classifier = nn.Conv2d(current, num_classes, kernel_size=1)

    def forward(self, pyramid: Pyramid) -> Tensor:  # -> (B, num_classes, H, W)
        x = pyramid.bottom
        for stage, skip in zip(self.stages, reversed(pyramid.skips), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        if pyramid.size is not None and tuple(x.shape[-2:]) != tuple(pyramid.size):
            x = F.interpolate(x, size=pyramid.size, mode="bilinear", align_corners=False)
        return self.classifier(x)
