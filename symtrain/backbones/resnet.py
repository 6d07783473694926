"""The ResNet family (18, 34, 50) on timm's blocks, with max, blur or APS downsampling.

timm builds the residual stages (``make_blocks``: its ``BasicBlock`` and ``Bottleneck``, its
``aa_layer`` slot after the nonlinearity of each strided convolution); this file adds the two
stems and what no library offers for the shortcut and for APS:

* ``max``: the torchvision/timm ResNet: strided convolutions, a strided max-pool in the
  ImageNet stem, a strided 1x1 convolution on the shortcut. Aliases.
* ``blur``: Zhang 2019 ("Making Convolutional Networks Shift-Invariant Again"), as the
  antialiased-cnns ResNets place it: every strided convolution runs at stride 1 and timm's
  ``BlurPool2d`` subsamples after its nonlinearity; the stem's max-pool runs densely, then
  blurs; the shortcut blurs, then its 1x1 convolution runs at stride 1.
* ``aps``: Chaman & Dokmanić 2021 ("Truly Shift-Invariant Convolutional Neural Networks"):
  the same places subsample by adaptive polyphase sampling after a blur at stride 1, the
  shortcut keeps the polyphase component its main path chose, and with circular padding
  everywhere the pooled features are exactly invariant to every circular shift of an image
  whose sides are multiples of the total stride.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar, Literal, get_args

import torch.nn.functional as F
from torch import Tensor, nn

from symtrain.backbones.antialiased import (
    AdaptivePolyphaseSampling,
    polyphase_component,
    polyphase_size_problem,
)
from symtrain.backbones.base import Backbone, Feature, LayerEdit, Pyramid
from symtrain.backbones.pyramid import PyramidDecoder
from symtrain.errors import SymtrainError
from symtrain.transforms import CircularShift, Shift, Symmetries

Downsample = Literal["max", "blur", "aps"]
Stem = Literal["cifar", "imagenet"]
STAGES = 4
# He et al. 2016's depths: blocks per stage, and whether they are bottlenecks.
LAYOUTS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True)}


class PolyphaseDown(nn.Module):
    """Blur at stride 1, then adaptive polyphase sampling; remembers the component it kept,
    which the block's shortcut reuses (:class:`SamePhaseDown`). Takes timm's ``aa_layer``
    arguments, so timm's blocks place it.

    Args:
        channels: channels of the map (timm's ``aa_layer`` signature).
        stride: must be 2.
        filt_size: taps of timm's binomial ``BlurPool2d`` per axis; 1 is no blur.
        pad_mode: how the blur pads (``circular`` for exact invariance).
    """

    def __init__(
        self, channels: int | None = None, stride: int = 2, filt_size: int = 3, pad_mode: str = "circular"
    ):
        super().__init__()
        if stride != 2:
            raise SymtrainError(f"adaptive polyphase sampling subsamples by 2, not {stride}")
        self.blur = _blur(channels, filt_size, pad_mode)
        self.sampling = AdaptivePolyphaseSampling()
        self.phase: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H // 2, W // 2)
        kept, self.phase = self.sampling.with_phase(self.blur(x))
        return kept


class SamePhaseDown(nn.Module):
    """The shortcut's downsampling in an APS block: blur, then keep the polyphase component
    the main path's :class:`PolyphaseDown` chose for the same sample, so both branches move
    alike under a shift (Chaman & Dokmanić 2021, Sec. 3.3).

    The main path runs first in timm's blocks (the shortcut is computed after it), so the
    choice is there to read. The leader is held as a plain attribute, not a submodule: it
    belongs to the block's main path and its state dict.
    """

    def __init__(self, leader: PolyphaseDown, channels: int, filt_size: int, pad_mode: str) -> None:
        super().__init__()
        object.__setattr__(self, "leader", leader)  # deepcopy maps it to the copied block's
        self.blur = _blur(channels, filt_size, pad_mode)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H // 2, W // 2)
        phase = self.leader.phase
        assert phase is not None, "the shortcut runs after its block's main path"
        return polyphase_component(self.blur(x), phase)


def _blur(channels: int | None, filt_size: int, pad_mode: str, stride: int = 1) -> nn.Module:
    from timm.layers import BlurPool2d

    if filt_size == 1:
        return nn.Identity() if stride == 1 else nn.AvgPool2d(1, stride)  # subsampling alone
    blur = BlurPool2d(channels, filt_size=filt_size, stride=stride, pad_mode=pad_mode)
    # timm pads an even filter by k // 2 on both sides, one row and column more than a 'same'
    # blur needs: at 32 px a 4-tap stride-2 blur gives 17, not 16 (then 9, 5), and a stride-1
    # one 33. Pad as antialiased-cnns does, (k - 1) // 2 before and k // 2 after (the same as
    # timm's for odd k).
    before, after = (filt_size - 1) // 2, filt_size // 2
    blur.padding = [before, after, before, after]
    return blur


class CircularMaxPool(nn.Module):
    """3x3 max-pooling at stride 1 that wraps around the border (torch pads max-pooling with
    -inf only), for the APS stem's exact claim."""

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.pad(x, (1, 1, 1, 1), mode="circular"), kernel_size=3, stride=1)


class ResNet(Backbone):
    """ResNet-18, -34 or -50 (He et al. 2016) with a CIFAR or ImageNet stem and max, blur or
    APS downsampling (see the module's docstring for where each one subsamples).

    The residual stages are timm's (``timm.models.resnet.make_blocks``, with its ``BasicBlock``
    and ``Bottleneck`` and its ``aa_layer`` placement); the stem, the anti-aliased shortcut and
    the APS layers are built here. ``stem: cifar`` is a 3x3 convolution at stride 1 (total
    stride 8, as in the APS paper's CIFAR-10 ResNet-18); ``stem: imagenet`` is the 7x7
    convolution at stride 2 and the 3x3 max-pool (total stride 32). The layers the layer-wise
    measures read and the segmentation decoder's pyramid are the stem and the four stages.

    Args:
        in_channels: image channels (linked from the data by the CLI).
        depth: 18, 34 or 50.
        stem: ``cifar`` or ``imagenet``.
        downsample: ``max``, ``blur`` or ``aps``.
        width: channels of the stem and the first stage (64 in the papers); stage ``i``
            has ``width * 2**i`` (times 4 after a bottleneck).
        filter_size: taps of the binomial blur per axis (3 in both papers; 1 is none for
            ``aps``).
        circular: wrap every convolution, pooling and blur around the border. None: on for
            ``aps`` (its exact claim needs it), off otherwise.

    Examples:
        >>> import torch
        >>> net = ResNet(1, depth=18, downsample="aps", width=8).eval()
        >>> x = torch.rand(2, 1, 16, 16)
        >>> net(x).shape, net.total_stride
        (torch.Size([2, 64, 2, 2]), 8)
        >>> shifted = torch.roll(x, shifts=(3, 5), dims=(-2, -1))
        >>> torch.allclose(net(shifted).mean((-2, -1)), net(x).mean((-2, -1)), atol=1e-5)
        True
    """

    examples = (
        {"depth": 18, "width": 4, "downsample": "max"},
        {"depth": 18, "width": 4, "downsample": "blur", "stem": "imagenet"},
        {"depth": 18, "width": 4, "downsample": "aps"},
        {"depth": 50, "width": 4, "downsample": "aps"},
    )
    tiny: ClassVar[dict[str, Any]] = {"width": 8}
    setting_ranges: ClassVar[dict[str, tuple[Any, ...]]] = {
        "depth": (18, 34, 50),
        "stem": ("cifar", "imagenet"),
        "downsample": ("max", "blur", "aps"),
        "width": (2, 4),
        "filter_size": (1, 2, 3, 4, 5, 6, 7),
        "circular": (None, True, False),
    }

    def __init__(
        self,
        in_channels: int,
        depth: int = 18,
        stem: Stem = "cifar",
        downsample: Downsample = "max",
        width: int = 64,
        filter_size: int = 3,
        circular: bool | None = None,
    ) -> None:
        super().__init__()
        from timm.models.resnet import BasicBlock, Bottleneck, make_blocks

        _check_args(depth, stem, downsample, filter_size)
        self.depth, self.stem_kind, self.downsample = depth, stem, downsample
        self.circular = downsample == "aps" if circular is None else circular
        pad_mode = "circular" if self.circular else "reflect"  # reflect: Zhang's padding of the blur
        aa_layer = {
            "max": None,
            "blur": partial(_blur, filt_size=filter_size, pad_mode=pad_mode, stride=2),
            "aps": partial(PolyphaseDown, filt_size=filter_size, pad_mode=pad_mode),
        }[downsample]
        self.stem = self._stem(in_channels, width, stem, downsample, aa_layer)
        repeats, bottleneck = LAYOUTS[depth]
        block = Bottleneck if bottleneck else BasicBlock
        stages, _ = make_blocks(
            (block,) * STAGES,
            tuple(width * 2**i for i in range(STAGES)),
            repeats,
            inplanes=width,
            aa_layer=aa_layer,
        )
        self.stages = nn.ModuleDict(stages)  # layer1 ... layer4, timm's names
        for stage in self.stages.values():
            for residual in stage:
                # Only strided blocks have an aa layer: a bottleneck's first shortcut just widens.
                if residual.downsample is not None and not isinstance(residual.aa, nn.Identity):
                    residual.downsample = _antialiased_shortcut(residual, filter_size, pad_mode)
        if self.circular:
            for module in self.modules():
                if isinstance(module, nn.Conv2d) and module.padding != (0, 0):
                    module.padding_mode = "circular"
        stem_stride = 1 if stem == "cifar" else 4  # the ImageNet stem ends in its pooling
        self.strides = {"stem": stem_stride, **{f"layer{i + 1}": stem_stride * 2**i for i in range(STAGES)}}
        self.channels = [width, *(width * 2**i * block.expansion for i in range(STAGES))]
        self.out_channels = self.channels[-1]

    @staticmethod
    def _stem(
        in_channels: int, width: int, stem: Stem, downsample: Downsample, aa_layer: Any
    ) -> nn.Sequential:
        if stem == "cifar":
            conv = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            return nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        conv_stride = 1 if downsample == "aps" else 2  # Zhang keeps the strided 7x7 (pool_only)
        layers = [nn.Conv2d(in_channels, width, 7, stride=conv_stride, padding=3, bias=False)]
        layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        if downsample == "max":
            return nn.Sequential(*layers, nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        if downsample == "blur":
            return nn.Sequential(*layers, nn.MaxPool2d(3, stride=1, padding=1), aa_layer(width, stride=2))
        return nn.Sequential(*layers, aa_layer(width), CircularMaxPool(), aa_layer(width))

    @property
    def name(self) -> str:
        """``ResNet18-aps``, with ``-imagenet`` for the ImageNet stem."""
        stem = "" if self.stem_kind == "cifar" else "-imagenet"
        return f"{type(self).__name__}{self.depth}-{self.downsample}{stem}"

    def forward(self, images: Tensor) -> Tensor:  # (B, C, H, W) -> (B, out_channels, H/s, W/s)
        return list(self.layer_outputs(images).values())[-1]

    def feature_info(self) -> list[Feature]:
        """The stem's output and the four stages'."""
        return [
            Feature(name, stride, c)
            for (name, stride), c in zip(self.strides.items(), self.channels, strict=True)
        ]

    def layer_outputs(self, images: Tensor, edit: LayerEdit | None = None) -> dict[str, Tensor]:
        outputs: dict[str, Tensor] = {}
        features = images
        for name, module in (("stem", self.stem), *self.stages.items()):
            features = module(features)
            features = outputs[name] = features if edit is None else edit(name, features)
        return outputs

    def encode(self, images: Tensor) -> Pyramid:
        *finer, bottom = self.layer_outputs(images).values()
        return Pyramid(finer, bottom, [None] * len(finer), tuple(images.shape[-2:]))

    def decoder(self, num_classes: int) -> nn.Module:
        """A U-Net decoder over the stem and the four stages (:class:`PyramidDecoder`)."""
        return PyramidDecoder([feature.channels for feature in self.feature_info()], num_classes)

    def declared_symmetries(self) -> Symmetries:
        if self.downsample == "aps" and self.circular:
            return {CircularShift(): "exact", Shift(): "approximate"}
        return {Shift(): "approximate", CircularShift(): "approximate"}

    def dense_symmetries(self) -> Symmetries:
        # The decoder upsamples every map to the same offset, not to the polyphase component
        # APS kept (as AntialiasedCNN's APS-U does): per-pixel logits move by about 3e-2.
        return {family: "approximate" for family in self.declared_symmetries()}

    def input_size_problem(self, image_size: int) -> str | None:
        return polyphase_size_problem(self, image_size)


def _antialiased_shortcut(residual: nn.Module, filter_size: int, pad_mode: str) -> nn.Sequential:
    """The shortcut of a downsampling block with blur (Zhang 2019: blur-pool, then the 1x1
    convolution at stride 1) or APS (the main path's component); timm's own shortcut is a
    strided 1x1 convolution, which samples without any low-pass filter."""
    conv, norm = residual.downsample
    channels = conv.in_channels
    if isinstance(residual.aa, PolyphaseDown):
        down: nn.Module = SamePhaseDown(residual.aa, channels, filter_size, pad_mode)
    else:
        down = _blur(channels, filter_size, pad_mode, stride=2)
    unstrided = nn.Conv2d(channels, conv.out_channels, 1, bias=False)
    return nn.Sequential(down, unstrided, norm)


def _check_args(depth: int, stem: str, downsample: str, filter_size: int) -> None:
    if depth not in LAYOUTS:
        raise SymtrainError(f"ResNet depth {depth} is not one of {sorted(LAYOUTS)}: use 18, 34 or 50")
    if stem not in get_args(Stem):
        raise SymtrainError(
            f"ResNet stem {stem!r} is unknown: use cifar (3x3, stride 1) or imagenet (7x7 + pool)"
        )
    if downsample not in get_args(Downsample):
        raise SymtrainError(f"ResNet downsample {downsample!r} is unknown: use max, blur or aps")
    if filter_size not in (1, 2, 3, 4, 5, 6, 7) or (filter_size == 1 and downsample == "blur"):
        raise SymtrainError(
            f"ResNet filter_size {filter_size} is not a blur: use 3 (both papers' default) or 5"
        )
