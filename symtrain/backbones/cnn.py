"""A plain CNN: conv-BN-ReLU stages with max-pool downsampling, the baseline of every study."""

from __future__ import annotations

from torch import Tensor, nn

from symtrain.backbones.base import Backbone
from symtrain.transforms import Exactness


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """A 'same'-padded convolution, batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class StandardCNN(Backbone):
    """Conv-BN-ReLU stages, each followed by 2x2 max-pooling with stride 2.

    Convolutions are shift-equivariant, but max-pooling with stride aliases, so the pooled
    features are only approximately shift-invariant.

    Args:
        in_channels: image channels (linked from the data by the CLI).
        width: channels of the first stage; each later stage doubles it.
        depth: number of stages (each halves the resolution).
        convs_per_stage: convolutions before each pooling.
        kernel_size: odd convolution kernel size.

    Examples:
        >>> import torch
        >>> net = StandardCNN(in_channels=1, width=8, depth=2)
        >>> net(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 16, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        width: int = 32,
        depth: int = 3,
        convs_per_stage: int = 1,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in range(depth):
            stage_channels = width * 2**stage
            for _ in range(convs_per_stage):
                layers.append(conv_bn_relu(channels, stage_channels, kernel_size))
                channels = stage_channels
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.layers = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)  # (B, width * 2**(depth-1), H / 2**depth, W / 2**depth)

    def declared_symmetries(self) -> dict[str, Exactness]:
        return {"shift": "approximate", "circular_shift": "approximate"}
