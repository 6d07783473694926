"""Anti-aliased CNNs: StandardCNN's stages with downsampling that aliases less, or not at all.

Max-pooling with stride 2 subsamples a feature map without low-pass filtering it, so a
one-pixel shift of the input can change the features a lot (aliasing). Two repairs:

* BlurPool (Zhang, "Making Convolutional Networks Shift-Invariant Again", ICML 2019): max-pool
  densely (stride 1), blur with a binomial filter, then subsample. Aliasing shrinks, and with it
  the sensitivity to shifts, but it does not vanish.
* Adaptive polyphase sampling, APS (Chaman & Dokmanić, "Truly Shift-Invariant Convolutional
  Neural Networks", CVPR 2021): of the four ways to subsample by 2 (the polyphase components),
  keep the one of largest norm. A circular shift of the input permutes the components and rolls
  their content, so the choice follows the shift: with circular padding throughout, the pooled
  features are exactly invariant to circular shifts.

For segmentation the decoder upsamples to match: ``blur`` inserts zeros and blurs with the
same binomial filter (which interpolates linearly); ``aps`` puts every sample back at the
polyphase offset its downsampling kept, then blurs (APS-U, Chaman & Dokmanić 2021), which
makes the per-pixel logits exactly equivariant to every circular shift, not only to
multiples of the total stride.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from kornia.filters.kernels import get_pascal_kernel_2d
from torch import Tensor, nn

from symtrain.backbones.base import Backbone
from symtrain.backbones.cnn import _StagedCNN, conv_stages
from symtrain.errors import SymtrainError
from symtrain.transforms import CircularShift, Shift, Symmetries, declared_exactness

Downsample = Literal["max", "blur", "aps"]
PaddingMode = Literal["reflect", "circular", "zeros"]
MAX_FILTER_SIZE = 7
# F.pad calls zero padding "constant".
_F_PAD_MODE = {"reflect": "reflect", "circular": "circular", "zeros": "constant"}


class DenseMaxPool(nn.Module):
    """2x2 max-pooling with stride 1 that keeps the size: the first half of a BlurPool.

    Args:
        circular: wrap around at the border (for exact circular-shift equivariance); otherwise
            the last row and column take the max of what lies inside the frame.

    Examples:
        >>> x = torch.tensor([[[[1.0, 5.0, 2.0, 0.0]]]])
        >>> DenseMaxPool(circular=True)(x).flatten().tolist()
        [5.0, 5.0, 2.0, 1.0]
        >>> DenseMaxPool(circular=False)(x).flatten().tolist()
        [5.0, 5.0, 2.0, 0.0]
    """

    def __init__(self, circular: bool) -> None:
        super().__init__()
        self.circular = circular

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        # One extra pixel at the bottom and right; repeating the edge makes it the max of the
        # in-frame pixels, and with it max-pooling at stride 2 is this map's even samples.
        x = F.pad(x, (0, 1, 0, 1), mode="circular" if self.circular else "replicate")
        if torch.is_grad_enabled() and x.requires_grad:
            return F.max_pool2d(x, kernel_size=2, stride=1)
        # The same values: on the CPU, two elementwise maxima run about 20x faster than
        # max_pool2d at stride 1, but max_pool2d's backward is the faster one when training.
        rows = torch.maximum(x[..., :-1, :], x[..., 1:, :])
        return torch.maximum(rows[..., :-1], rows[..., 1:])


class BinomialFilter(nn.Module):
    """A binomial low-pass filter applied to every channel alone, then subsampling by ``stride``.

    kornia's ``BlurPool2D`` zero-pads only, and zero padding darkens the border (and breaks
    circular symmetry), so only the binomial kernel comes from kornia; padding and the strided
    depthwise convolution are done here. The output has ceil(H / stride) rows, as in kornia.

    Args:
        filter_size: taps per axis, 1 to 7 (rows of Pascal's triangle: [1, 2, 1] for 3); 1 only
            subsamples.
        stride: subsampling factor after filtering.
        padding_mode: ``reflect`` (Zhang's choice), ``circular`` or ``zeros``.

    Examples:
        >>> blur = BinomialFilter(filter_size=3, stride=2, padding_mode="circular")
        >>> x = torch.tensor([[[[4.0, 0.0, 0.0, 0.0]]]])
        >>> blur(x).flatten().tolist()
        [2.0, 0.0]
    """

    def __init__(self, filter_size: int, stride: int, padding_mode: PaddingMode) -> None:
        super().__init__()
        self.filter_size = filter_size
        self.stride = stride
        self.padding_mode = padding_mode
        # A constant of the architecture, not a weight: kept out of the state dict, so
        # checkpoints of every downsampling mode share their keys with StandardCNN's.
        kernel = get_pascal_kernel_2d(filter_size, norm=True)  # (k, k), sums to 1
        self.register_buffer("kernel", kernel[None, None], persistent=False)  # (1, 1, k, k)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, ceil(H/s), ceil(W/s))
        before, after = (self.filter_size - 1) // 2, self.filter_size // 2  # 'same' for even sizes too
        x = F.pad(x, (before, after, before, after), mode=_F_PAD_MODE[self.padding_mode])
        channels = x.shape[1]
        kernel = self.kernel.to(x.dtype).expand(channels, 1, -1, -1)  # (C, 1, k, k)
        return F.conv2d(x, kernel, stride=self.stride, groups=channels)


class AdaptivePolyphaseSampling(nn.Module):
    """Subsample by 2, keeping per sample the polyphase component of largest l2 norm.

    The four components are ``x[..., i::2, j::2]`` for i, j in {0, 1}; the norm runs over
    (C, H, W). Ties go to the first of them in that order. An odd height or width loses its
    last row or column, as with max-pooling, and then circular shifts are no longer exact.

    Examples:
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> x[0, 0, 3, 1] = 1.0  # in component (1, 1); subsampling from (0, 0) would miss it
        >>> AdaptivePolyphaseSampling()(x)[0, 0].tolist()
        [[0.0, 0.0], [1.0, 0.0]]
    """

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H // 2, W // 2)
        return self.with_phase(x)[0]

    def with_phase(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The subsampled map and, per sample, the component kept (``2 * row + col`` offset)."""
        batch, channels, height, width = x.shape
        x = x[..., : height // 2 * 2, : width // 2 * 2]
        grid = x.reshape(batch, channels, height // 2, 2, width // 2, 2)  # x[b, c, 2r + i, 2s + j]
        # Squaring is elementwise, so a shifted input squares to the same values; float64 then
        # adds them up almost independently of their order, so the ranking follows the shift.
        # In float32 (or bf16) sums, near-ties would flip with the shift. MPS has no float64.
        total = torch.float32 if x.device.type == "mps" else torch.float64
        norms = grid.square().sum(dim=(1, 2, 4), dtype=total).flatten(1)  # (B, 4), i-major
        chosen = norms.argmax(dim=1)  # (B,), the first maximum on ties
        return polyphase_component(x, chosen), chosen


def polyphase_component(x: Tensor, chosen: Tensor) -> Tensor:
    """Per sample, the polyphase component ``chosen`` (``2 * row + col`` offset) of ``x``
    subsampled by 2; an odd last row or column is dropped.

    Examples:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> polyphase_component(x, torch.tensor([3]))[0, 0].tolist()
        [[5.0, 7.0], [13.0, 15.0]]
    """
    batch, channels, height, width = x.shape  # -> (B, C, H // 2, W // 2)
    grid = x[..., : height // 2 * 2, : width // 2 * 2].reshape(batch, channels, height // 2, 2, width // 2, 2)
    phases = grid.permute(0, 3, 5, 1, 2, 4)  # (B, 2, 2, C, h, w)
    return phases[torch.arange(batch, device=x.device), chosen // 2, chosen % 2]


class PolyphaseUpsampling(nn.Module):
    """Upsample by 2: each sample goes back to the polyphase offset it came from (offset 0
    without one), zeros fill the other three, then a binomial blur interpolates them.

    With the 3-tap filter [1, 2, 1] this is linear interpolation; placing samples at the
    offset APS kept makes upsampling follow every circular shift of the input (APS-U).

    Args:
        padding_mode: how the blur pads the border.

    Examples:
        >>> up = PolyphaseUpsampling("circular")
        >>> up(torch.tensor([[[[2.0, 4.0]]]]), torch.Size([1, 4]), None).flatten().tolist()
        [2.0, 3.0, 4.0, 3.0]
    """

    def __init__(self, padding_mode: PaddingMode) -> None:
        super().__init__()
        self.blur = BinomialFilter(3, stride=1, padding_mode=padding_mode)

    def forward(self, x: Tensor, size: torch.Size, phase: Tensor | None) -> Tensor:
        batch, channels, height, width = x.shape  # -> (B, C, *size)
        spread = x.new_zeros(batch, channels, 2 * height, 2 * width)
        grid = spread.view(batch, channels, height, 2, width, 2)  # spread[b, c, 2r + i, 2s + j]
        if phase is None:
            grid[:, :, :, 0, :, 0] = x
        else:
            grid = grid.permute(0, 3, 5, 1, 2, 4)  # (B, 2, 2, C, h, w), a view
            grid[torch.arange(batch, device=x.device), phase // 2, phase % 2] = x
        # Three of four samples are zeros: the gain of 4 keeps the mean of the map.
        up = 4 * self.blur(spread)[..., : size[0], : size[1]]
        # An odd side lost its last row or column to APS: repeat the edge to restore it.
        return F.pad(up, (0, size[1] - up.shape[-1], 0, size[0] - up.shape[-2]), mode="replicate")


class AntialiasedCNN(_StagedCNN):
    """StandardCNN's conv-BN-ReLU stages with anti-aliased downsampling.

    ``downsample`` chooses what ends each stage:

    * ``max``: 2x2 max-pooling with stride 2, exactly StandardCNN (the baseline);
    * ``blur``: 2x2 max-pooling with stride 1, then a binomial blur with stride 2 (BlurPool,
      Zhang 2019): approximately shift-invariant, with much less aliasing than ``max``;
    * ``aps``: 2x2 max-pooling with stride 1, a binomial blur with stride 1 (none when
      ``filter_size`` is 1), then adaptive polyphase sampling (Chaman & Dokmanić 2021).
      With circular padding everywhere (its default) the pooled features are exactly
      invariant to circular shifts of inputs whose height and width divide by
      :attr:`total_stride`; zero or reflect padding makes it approximate again.

    All modes share StandardCNN's state-dict keys, so weights move between them and it, and
    its named stage outputs for layer-wise measurements.

    Args:
        in_channels: image channels (linked from the data by the CLI).
        width: channels of the first stage; each later stage doubles it.
        depth: number of stages (each halves the resolution).
        convs_per_stage: convolutions before each downsampling.
        kernel_size: odd convolution kernel size.
        downsample: ``max``, ``blur`` or ``aps`` (above).
        filter_size: taps of the binomial blur per axis, 1 to 7 (unused by ``max``); 3 is
            [1, 2, 1], 1 is no blur.
        padding_mode: how the blur pads the border, ``reflect``, ``circular`` or ``zeros``.
            None: ``circular`` when ``circular`` is on, else ``reflect`` (Zhang's choice).
        circular: wrap convolutions, stride-1 max-pooling and (by default) the blur around the
            border, making every layer exactly equivariant to circular shifts. None: on for
            ``aps`` (exact invariance is its point), off for ``max`` and ``blur`` (zero-padded
            convolutions, as in StandardCNN).

    Examples:
        >>> net = AntialiasedCNN(in_channels=1, width=4, depth=2, downsample="aps").eval()
        >>> x = torch.rand(2, 1, 16, 16)
        >>> net(x).shape
        torch.Size([2, 8, 4, 4])
        >>> net.name, net.total_stride, net.declared_symmetries()[CircularShift()]
        ('AntialiasedCNN-aps', 4, 'exact')
        >>> shifted = torch.roll(x, shifts=(3, 5), dims=(-2, -1))
        >>> torch.allclose(net(shifted).mean(dim=(-2, -1)), net(x).mean(dim=(-2, -1)), atol=1e-5)
        True
    """

    examples = tuple({"width": 4, "depth": 2, "downsample": d} for d in ("max", "blur", "aps"))
    tiny = {"width": 4, "depth": 2}
    setting_ranges: ClassVar[dict[str, tuple[Any, ...]]] = {
        "width": (2, 4),
        "depth": (1, 2, 3),
        "convs_per_stage": (1, 2),
        "kernel_size": (1, 3, 5),
        "downsample": ("max", "blur", "aps"),
        "filter_size": tuple(range(1, MAX_FILTER_SIZE + 1)),
        "padding_mode": (None, "reflect", "circular", "zeros"),
        "circular": (None, True, False),
    }

    def __init__(
        self,
        in_channels: int,
        width: int = 32,
        depth: int = 3,
        convs_per_stage: int = 1,
        kernel_size: int = 3,
        downsample: Downsample = "blur",
        filter_size: int = 3,
        padding_mode: PaddingMode | None = None,
        circular: bool | None = None,
    ) -> None:
        super().__init__()
        _check_args(depth, kernel_size, downsample, filter_size, padding_mode)
        self.depth = depth
        self.downsample = downsample
        self.filter_size = filter_size
        self.circular = downsample == "aps" if circular is None else circular
        self.padding_mode: PaddingMode = padding_mode or ("circular" if self.circular else "reflect")
        self.dense_args = dict(
            width=width,
            depth=depth,
            convs_per_stage=convs_per_stage,
            kernel_size=kernel_size,
            padding_mode="circular" if self.circular else "zeros",
        )
        self.layers, self.out_channels = conv_stages(
            in_channels, **self.dense_args, downsample=self._downsampling
        )

    @property
    def name(self) -> str:
        """``AntialiasedCNN-{downsample}``: runs of the three modes group apart on dashboards."""
        return f"{type(self).__name__}-{self.downsample}"

    def _downsampling(self) -> nn.Module:
        if self.downsample == "max":
            return nn.MaxPool2d(kernel_size=2, stride=2)
        if self.downsample == "blur":
            return nn.Sequential(
                DenseMaxPool(self.circular), BinomialFilter(self.filter_size, 2, self.padding_mode)
            )
        blur = [BinomialFilter(self.filter_size, 1, self.padding_mode)] if self.filter_size > 1 else []
        return nn.Sequential(DenseMaxPool(self.circular), *blur, AdaptivePolyphaseSampling())

    def _downsample(self, layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.downsample != "aps":
            return layer(x), None
        *before, sampling = layer
        for module in before:
            x = module(x)
        return sampling.with_phase(x)

    def _upsampling(self) -> nn.Module:
        return super()._upsampling() if self.downsample == "max" else PolyphaseUpsampling(self.padding_mode)

    def declared_symmetries(self) -> Symmetries:
        wraps = self.circular and (self.padding_mode == "circular" or self.filter_size == 1)
        if self.downsample == "aps" and wraps:
            return {CircularShift(): "exact", Shift(): "approximate"}
        return {Shift(): "approximate", CircularShift(): "approximate"}

    def dense_symmetries(self) -> Symmetries:
        declared = self.declared_symmetries()
        if self.padding_mode == "circular":
            return declared
        # The decoder's upsampling blurs with padding_mode whatever the filter size: without
        # wrapping, per-pixel logits near the border do not follow a circular shift.
        return {family: "approximate" for family in declared}

    def input_size_problem(self, image_size: int) -> str | None:
        return polyphase_size_problem(self, image_size, " or use fewer stages (--model.backbone.depth)")


def polyphase_size_problem(backbone: Backbone, image_size: int, other_fix: str = "") -> str | None:
    """Why ``image_size`` breaks an APS backbone's exact circular-shift claim: only sides that
    are multiples of its total stride keep every polyphase component whole (None otherwise)."""
    exact = declared_exactness(backbone.declared_symmetries(), CircularShift()) == "exact"
    stride = backbone.total_stride
    if not exact or image_size % stride == 0:
        return None
    fit = image_size - image_size % stride or stride
    return (
        f"{backbone.name} is exactly invariant to circular shifts only on images whose side is a "
        f"multiple of its total stride {stride}, not {image_size}: resize the data "
        f"(e.g. --data.image_size {fit}){other_fix}"
    )


def _check_args(
    depth: int, kernel_size: int, downsample: str, filter_size: int, padding_mode: str | None
) -> None:
    if downsample not in get_args(Downsample):
        raise SymtrainError(f"AntialiasedCNN downsample {downsample!r} is unknown: use max, blur or aps")
    if not 1 <= filter_size <= MAX_FILTER_SIZE:
        raise SymtrainError(
            f"AntialiasedCNN filter_size {filter_size} is outside 1..{MAX_FILTER_SIZE}: "
            "use 3 (Zhang's default) or 5 for a stronger blur"
        )
    if padding_mode is not None and padding_mode not in get_args(PaddingMode):
        raise SymtrainError(
            f"AntialiasedCNN padding_mode {padding_mode!r} is unknown: use reflect, circular or zeros"
        )
    if depth < 1:
        raise SymtrainError(f"AntialiasedCNN depth {depth} must be at least 1: every stage downsamples")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise SymtrainError(
            f"AntialiasedCNN kernel_size {kernel_size} must be odd: an even one shifts maps by half a pixel"
        )
