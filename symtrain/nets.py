"""The trained networks themselves: plain ``nn.Module``s that map images in [0, 1] to logits.

:class:`SymmetryNet` (normalisation, backbone, pooled classification head) for classification,
:class:`SegmentationNet` (normalisation, the backbone as the encoder of a U-Net, its decoder)
for segmentation. A task (:mod:`symtrain.tasks`) builds one around the backbone;
:class:`~symtrain.module.SymmetryModule` adds what only training needs. Checkpoints and scripts
may name them as ``symtrain.module.<Name>``, which still imports them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from symtrain.backbones import Backbone


class Normalize(nn.Module):
    """Per-channel standardisation, part of the model so transformations act on raw images."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std


class ClassificationHead(nn.Module):
    """Global average pooling and a linear classifier: spatial invariance comes from the pooling."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features.mean(dim=(-2, -1)))  # (B, C, h, w) -> (B, num_classes)


class SymmetryNet(nn.Module):
    """The network alone: images in [0, 1] (B, C, H, W) -> logits (B, num_classes).

    Examples:
        >>> from symtrain.backbones import StandardCNN
        >>> net = SymmetryNet(Normalize([0.5], [0.5]), StandardCNN(1, width=4, depth=1), 3)
        >>> net(torch.rand(2, 1, 16, 16)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self, normalize: Normalize, backbone: Backbone, num_classes: int, head: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.head = ClassificationHead(backbone.out_channels, num_classes) if head is None else head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(self.normalize(images)))

    def export(self) -> SymmetryNet:
        """The same network with an escnn backbone as plain torch modules (identical outputs,
        no escnn at inference), in eval mode; itself when there is nothing to export."""
        if not hasattr(self.backbone, "export"):
            return self
        return SymmetryNet(self.normalize, self.backbone.export(), 0, head=self.head).eval()


class SegmentationNet(nn.Module):
    """The network alone: images in [0, 1] (B, C, H, W) -> per-pixel logits (B, num_classes, H, W).

    The backbone is the encoder of a U-Net and builds its own decoder
    (:meth:`~symtrain.backbones.Backbone.decoder`), so the dense output keeps the backbone's
    symmetry: an escnn C4 model's logits rotate exactly with the image.

    Examples:
        >>> from symtrain.backbones import StandardCNN
        >>> net = SegmentationNet(Normalize([0.5], [0.5]), StandardCNN(1, width=4, depth=2), 3)
        >>> net(torch.rand(2, 1, 16, 16)).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(
        self, normalize: Normalize, backbone: Backbone, num_classes: int, decoder: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.decoder = backbone.decoder(num_classes) if decoder is None else decoder

    def forward(self, images: Tensor) -> Tensor:
        return self.decoder(self.backbone.encode(self.normalize(images)))

    def export(self) -> SegmentationNet:
        """The same network with an escnn encoder and decoder as plain torch modules (identical
        outputs, no escnn at inference), in eval mode; itself when there is nothing to export."""
        if not hasattr(self.backbone, "export_encoder"):
            return self
        encoder, decoder = self.backbone.export_encoder(), self.decoder.export()
        return SegmentationNet(self.normalize, encoder, 0, decoder=decoder).eval()
