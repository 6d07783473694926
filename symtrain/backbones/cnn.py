"""A plain CNN: conv-BN-ReLU stages with max-pool downsampling, the baseline of every study."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import Tensor, nn

from symtrain.backbones.base import Backbone
from symtrain.transforms import Exactness

ConvPadding = Literal["zeros", "circular"]


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, padding_mode: ConvPadding = "zeros"
) -> nn.Sequential:
    """A 'same'-padded convolution, batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=kernel_size // 2,
            padding_mode=padding_mode,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def conv_stages(
    in_channels: int,
    width: int,
    depth: int,
    convs_per_stage: int,
    kernel_size: int,
    downsample: Callable[[], nn.Module],
    padding_mode: ConvPadding = "zeros",
) -> tuple[nn.Sequential, int]:
    """Conv-BN-ReLU stages, stage ``i`` with ``width * 2**i`` channels, each ending in ``downsample()``.

    The layers sit flat in one ``nn.Sequential`` so that every CNN built here has the same
    state-dict keys (``0.0.weight``, ...) whatever its downsampling: weights move between them.

    Returns:
        The layers and the channels of their output.
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for stage in range(depth):
        stage_channels = width * 2**stage
        for _ in range(convs_per_stage):
            layers.append(conv_bn_relu(channels, stage_channels, kernel_size, padding_mode))
            channels = stage_channels
        layers.append(downsample())
    return nn.Sequential(*layers), channels


class _StagedCNN(Backbone):
    """Shared by the CNNs built with :func:`conv_stages`: each stage's output is a named layer."""

    layers: nn.Sequential
    depth: int

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)  # (B, width * 2**(depth-1), H / 2**depth, W / 2**depth)

    def layer_strides(self) -> dict[str, int]:
        return {f"stage{stage + 1}": 2 ** (stage + 1) for stage in range(self.depth)}

    def layer_outputs(self, images: Tensor) -> dict[str, Tensor]:
        per_stage = len(self.layers) // self.depth  # every stage ends in its downsampling
        outputs, features = {}, images
        for index, layer in enumerate(self.layers):
            features = layer(features)
            if (index + 1) % per_stage == 0:
                outputs[f"stage{(index + 1) // per_stage}"] = features
        return outputs


class StandardCNN(_StagedCNN):
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
        self.depth = depth
        self.layers, self.out_channels = conv_stages(
            in_channels,
            width,
            depth,
            convs_per_stage,
            kernel_size,
            downsample=lambda: nn.MaxPool2d(kernel_size=2, stride=2),
        )

    def declared_symmetries(self) -> dict[str, Exactness]:
        return {"shift": "approximate", "circular_shift": "approximate"}
