"""The backbone contract every feature extractor honours.

A backbone maps a normalised image batch (B, C_in, H, W) to a feature map
(B, out_channels, h, w), which the classification head pools. For segmentation the same
backbone is the encoder of a U-Net: :meth:`Backbone.encode` returns the feature map of every
resolution and :meth:`Backbone.decoder` builds the matching decoder, which upsamples back to
per-pixel logits. Each backbone declares which transformation families (by
:attr:`symtrain.transforms.TransformFamily.name`) its *pooled* features are invariant to, and
so its dense outputs equivariant to, exactly (by construction) or approximately, so strategies
and metrics can check claims against measurements.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from symtrain.errors import SymtrainError
from symtrain.transforms import Symmetries, TransformFamily


class Pyramid(NamedTuple):
    """What a U-Net decoder needs from its encoder.

    Attributes:
        skips: the finer feature maps, finest first, as :meth:`Backbone.feature_info`
            declares them (for the stride-2 CNNs each stage's features just before its
            downsampling; for a ResNet its stem and stages, at strides 1 or 4, then 2, 4, 8, ...).
        bottom: the coarsest feature map.
        phases: per downsampling, the (B,) index of the polyphase component it kept
            (``2 * row + col`` offset), or None where it always keeps the same one.
        size: the input's (H, W), for decoders whose finest skip is coarser than the input.
    """

    skips: list[Tensor]
    bottom: Tensor
    phases: list[Tensor | None]
    size: tuple[int, int] | None = None


class Feature(NamedTuple):
    """One map of a backbone's declared feature pyramid, as timm's ``feature_info`` gives it.

    Attributes:
        name: what the layer-wise measures and dashboards call it.
        stride: input pixels per cell of the map (its reduction).
        channels: channels of the map.
    """

    name: str
    stride: int
    channels: int


class Backbone(nn.Module):
    """Base class of feature extractors.

    Subclasses take ``in_channels`` as their first constructor argument (the CLI links it
    from the data), set :attr:`out_channels`, implement :meth:`forward` and override
    :meth:`declared_symmetries`.

    Attributes:
        out_channels: channels of the feature map returned by :meth:`forward`.
        examples: settings of tiny instances (besides ``in_channels``), one per form worth
            testing: the contract tests build each (as timm tests every registered model).
        tiny: settings that shrink a shipped config of this backbone without changing what it
            is, for the suite's runs of every config.
        setting_ranges: for each constructor argument worth varying, the values it accepts
            (at test sizes: small widths): the contract tests draw settings from them with
            hypothesis and measure every exact claim of each draw, so a claim that holds for
            the ``examples`` but not for another legal setting fails the suite.
    """

    out_channels: int
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({},)
    # Settings that shrink any configuration of the backbone without changing what it is (its
    # group, its downsampling, its timm model): what the suite adds to the shipped configs.
    tiny: ClassVar[dict[str, Any]] = {}
    setting_ranges: ClassVar[dict[str, tuple[Any, ...]]] = {}

    def forward(self, images: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, out_channels, h, w)
        raise NotImplementedError

    @property
    def name(self) -> str:
        """Short name of this configuration, e.g. ``EquivariantCNN-D4``: what dashboards group by."""
        return type(self).__name__

    def declared_symmetries(self) -> Symmetries:
        """Families (objects, with their parameters: a claim about ``Flip("horizontal")`` is not
        one about ``Flip("vertical")``) the globally pooled features are invariant to, and how
        exactly. The contract tests measure every ``exact`` claim, over drawn settings
        (:attr:`setting_ranges`), at every size :meth:`input_size_problem` accepts."""
        return {}

    def dense_symmetries(self) -> Symmetries:
        """The families the dense form (:meth:`encode`, then :meth:`decoder`: per-pixel logits)
        is equivariant to, and how exactly: by default the pooled features' claims, which
        hold when the decoder is built from the same equivariant pieces; a backbone whose
        decoder is a plain U-Net over equivariant features declares them approximate."""
        return self.declared_symmetries()

    def feature_info(self) -> list[Feature]:
        """The declared feature pyramid: the maps :meth:`encode` returns, finest first (its
        skips, then its bottom), with their strides and channels. Decoders are built from it,
        size checks read its strides (:attr:`total_stride`), and the contract tests hold
        :meth:`encode` to it; strides need not be 2, 4, 8, ... (empty: no dense form)."""
        return []

    @property
    def total_stride(self) -> int:
        """Input pixels per cell of the coarsest declared map (1 when none is declared)."""
        features = self.feature_info()
        return features[-1].stride if features else 1

    def encode(self, images: Tensor) -> Pyramid:
        """The features of every resolution, for a segmentation decoder (:meth:`feature_info`
        declares them)."""
        raise SymtrainError(f"{self.name} has no dense form: choose a backbone that segments")

    def decoder(self, num_classes: int) -> nn.Module:
        """A decoder mapping :meth:`encode`'s pyramid to logits (B, num_classes, H, W) at the
        input's resolution."""
        raise SymtrainError(f"{self.name} has no dense form: choose a backbone that segments")

    def input_size_problem(self, image_size: int) -> str | None:
        """Why images of side ``image_size`` break an exact symmetry this backbone declares (a
        one-line message naming the fix), or None when they do not."""
        return None

    def runs_at(self, image_size: int, in_channels: int) -> bool:
        """Whether one image of side ``image_size`` runs through the backbone to a non-empty
        feature map: images smaller than the total stride may (through padding: ImageNet
        ResNets on 28 pixels), and some layers' sizes fail to line up on odd sides (timm's
        average-pooling ``aa_layer`` against a strided shortcut)."""
        was_training = self.training
        parameter = next(self.parameters(), None)
        device, dtype = (parameter.device, parameter.dtype) if parameter is not None else (None, None)
        try:
            with torch.no_grad():
                image = torch.zeros(1, in_channels, image_size, image_size, device=device, dtype=dtype)
                return self.eval()(image).numel() > 0
        except RuntimeError:  # e.g. a pooling window larger than its input, or maps of two sizes added
            return False
        finally:
            self.train(was_training)

    def without_cache(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """``state`` (the state dict of a network holding this backbone) without the entries
        that cache what is computed from the weights, which a state dict may or may not hold
        depending on the mode it was saved in (none by default)."""
        return dict(state)

    def unsyncable_norms(self) -> tuple[type, ...]:
        """The batch-norm types of this backbone and its dense form that torch's SyncBatchNorm
        conversion cannot reach: under DDP their statistics stay per process (none by default)."""
        return ()

    def layer_strides(self) -> dict[str, int]:
        """Named intermediate feature maps and their cumulative strides, for layer-wise
        equivariance measurements (by default the declared pyramid's maps)."""
        return {feature.name: feature.stride for feature in self.feature_info()}

    def layer_outputs(self, images: Tensor, edit: LayerEdit | None = None) -> dict[str, Tensor]:
        """The feature maps named by :meth:`layer_strides` for normalised ``images``, in network
        order; the last is :meth:`forward`'s output.

        Args:
            images: normalised images (B, C_in, H, W).
            edit: when given, each named map is replaced by ``edit(name, map)`` before the rest of
                the network reads it (how layer-wise Lie derivatives perturb one stage).
        """
        return {}

    def act_on_layer(
        self, name: str, family: TransformFamily, element: Tensor, features: Tensor
    ) -> Tensor | None:
        """How ``element`` of ``family`` acts on layer ``name``'s features, or None if it cannot
        act exactly. By default only spatially: plain channels carry no group action."""
        return family.act_on_features(features, element, self.layer_strides()[name])


LayerEdit = Callable[[str, Tensor], Tensor]
"""Replaces a named feature map inside the network: (name, features) -> features."""

BackboneFactory = Callable[[int], Backbone]
"""A backbone class with its settings, still waiting for ``in_channels`` from the data."""
