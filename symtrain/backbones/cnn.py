"""A plain CNN: conv-BN-ReLU stages with max-pool downsampling, the baseline of every study.

For segmentation it is the encoder of a U-Net (:class:`UNetDecoder`): nearest-neighbour
upsampling, concatenation with the skip of the same resolution, conv-BN-ReLU, and a 1x1
convolution to per-pixel logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from symtrain.backbones.base import Backbone, Feature, LayerEdit, Pyramid
from symtrain.transforms import CircularShift, Shift, Symmetries

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


class NearestUpsampling(nn.Module):
    """Upsampling by repeating pixels (no filtering): the counterpart of max-pooling."""

    def forward(self, x: Tensor, size: torch.Size, phase: Tensor | None) -> Tensor:
        return F.interpolate(x, size=size, mode="nearest")  # (B, C, h, w) -> (B, C, *size)


class UNetDecoder(nn.Module):
    """The decoder of a U-Net over :func:`conv_stages`: per stage, deepest first, upsample,
    concatenate the stage's skip, and apply ``convs_per_stage`` conv-BN-ReLU layers with the
    stage's width; then a 1x1 convolution to per-pixel logits.

    Args:
        width: channels of the first stage (doubled per stage, as in the encoder).
        depth: number of stages.
        convs_per_stage: convolutions per stage.
        kernel_size: odd convolution kernel size.
        num_classes: logits per pixel.
        upsampling: builds one upsampling module per stage; its ``forward(x, size, phase)``
            takes the skip's spatial size and the encoder's polyphase choice.
        padding_mode: padding of the convolutions.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        convs_per_stage: int,
        kernel_size: int,
        num_classes: int,
        upsampling: Callable[[], nn.Module],
        padding_mode: ConvPadding = "zeros",
    ) -> None:
        super().__init__()
        self.upsampling = nn.ModuleList(upsampling() for _ in range(depth))
        self.stages = nn.ModuleList()
        channels = width * 2 ** (depth - 1)  # the bottom's
        for stage in reversed(range(depth)):
            stage_channels = width * 2**stage
            convs = []
            for index in range(convs_per_stage):
                convs.append(
                    conv_bn_relu(
                        channels + stage_channels if index == 0 else stage_channels,
                        stage_channels,
                        kernel_size,
                        padding_mode,
                    )
                )
            self.stages.append(nn.Sequential(*convs))
            channels = stage_channels
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, pyramid: Pyramid) -> Tensor:  # -> (B, num_classes, H, W)
        x = pyramid.bottom
        depth = len(pyramid.skips)
        for index, (upsample, stage) in enumerate(zip(self.upsampling, self.stages, strict=True)):
            level = depth - 1 - index
            skip = pyramid.skips[level]
            x = upsample(x, skip.shape[-2:], pyramid.phases[level])
            x = stage(torch.cat([x, skip], dim=1))
        return self.classifier(x)


class _StagedCNN(Backbone):
    """Shared by the CNNs built with :func:`conv_stages`: each stage's output is a named layer."""

    layers: nn.Sequential
    depth: int
    # The stages' settings, shared by the encoder (conv_stages) and the decoder (UNetDecoder).
    dense_args: dict

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)  # (B, width * 2**(depth-1), H / 2**depth, W / 2**depth)

    def _downsample(self, layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """A stage's downsampling and the polyphase component it kept (None: always the first)."""
        return layer(x), None

    def _upsampling(self) -> nn.Module:
        return NearestUpsampling()

    def encode(self, images: Tensor) -> Pyramid:
        per_stage = len(self.layers) // self.depth  # every stage ends in its downsampling
        skips, phases, x = [], [], images
        for index, layer in enumerate(self.layers):
            if (index + 1) % per_stage:
                x = layer(x)
                continue
            skips.append(x)
            x, phase = self._downsample(layer, x)
            phases.append(phase)
        return Pyramid(skips, x, phases)

    def feature_info(self) -> list[Feature]:
        """Each stage's map before its downsampling (``stage{i}_in``, stride ``2**(i-1)``),
        then the last stage's output."""
        width = self.dense_args["width"]
        skips = [Feature(f"stage{i + 1}_in", 2**i, width * 2**i) for i in range(self.depth)]
        return [*skips, Feature(f"stage{self.depth}", 2**self.depth, self.out_channels)]

    def decoder(self, num_classes: int) -> nn.Module:
        return UNetDecoder(**self.dense_args, num_classes=num_classes, upsampling=self._upsampling)

    def layer_strides(self) -> dict[str, int]:
        return {f"stage{stage + 1}": 2 ** (stage + 1) for stage in range(self.depth)}

    def layer_outputs(self, images: Tensor, edit: LayerEdit | None = None) -> dict[str, Tensor]:
        per_stage = len(self.layers) // self.depth  # every stage ends in its downsampling
        outputs, features = {}, images
        for index, layer in enumerate(self.layers):
            features = layer(features)
            if (index + 1) % per_stage == 0:
                name = f"stage{(index + 1) // per_stage}"
                features = outputs[name] = features if edit is None else edit(name, features)
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

    examples = ({"width": 4, "depth": 2},)
    tiny = {"width": 4, "depth": 2}
    setting_ranges: ClassVar[dict[str, tuple[Any, ...]]] = {
        "width": (2, 4),
        "depth": (1, 2, 3),
        "convs_per_stage": (1, 2),
        "kernel_size": (1, 3, 5),
    }

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
        self.dense_args = dict(
            width=width, depth=depth, convs_per_stage=convs_per_stage, kernel_size=kernel_size
        )
        self.layers, self.out_channels = conv_stages(
            in_channels, **self.dense_args, downsample=lambda: nn.MaxPool2d(kernel_size=2, stride=2)
        )

    def declared_symmetries(self) -> Symmetries:
        return {Shift(): "approximate", CircularShift(): "approximate"}
