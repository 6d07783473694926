"""The equivariant U-Net decoder, and the plain-torch (exported) encoder and decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from symtrain._lazy import lazy_module
from symtrain.backbones.base import Pyramid
from symtrain.backbones.equivariant.filters import _EscnnFilters
from symtrain.backbones.equivariant.ops import (
    FourierActivation,
    GroupMaxPool,
    NormPool,
    read_slice_bounds_on_host,
    symmetric_upsample,
)

if TYPE_CHECKING:
    from escnn import nn as enn
else:  # escnn is imported when the first EquivariantCNN is built, not by every symtrain command
    enn = lazy_module("escnn.nn")


def _export_layer(layer: enn.EquivariantModule) -> nn.Module:
    """One escnn layer as plain torch, including the ones escnn cannot export itself."""
    if isinstance(layer, enn.FourierPointwise):
        return FourierActivation(layer)
    if isinstance(layer, enn.NormPool):
        return NormPool(layer.in_type.representations[0].size)
    if isinstance(layer, enn.GroupPooling):
        return GroupMaxPool(layer.in_type.representations[0].size)
    return layer.export()


class _SymmetricUNetDecoder(nn.Module):
    """Per stage, deepest first: upsample on the pooling's symmetric grid, concatenate the
    skip, apply the stage; then the classifier. Subclasses say how a stage and the classifier
    run on plain tensors."""

    stages: nn.ModuleList
    classifier: nn.Module

    def _stage(self, index: int, features: Tensor) -> Tensor:
        raise NotImplementedError

    def _classify(self, features: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, pyramid: Pyramid) -> Tensor:  # -> (B, num_classes, H, W)
        x = pyramid.bottom
        depth = len(pyramid.skips)
        for index in range(len(self.stages)):
            skip = pyramid.skips[depth - 1 - index]
            x = self._stage(index, torch.cat([symmetric_upsample(x, skip.shape[-1]), skip], dim=1))
        return self._classify(x)


class EquivariantDecoder(_EscnnFilters, _SymmetricUNetDecoder):
    """The decoder of an equivariant U-Net: per stage, deepest first, upsample on the pooling's
    symmetric grid, concatenate the skip's fields, apply the stage's equivariant blocks; then a
    1x1 convolution to scalar (trivial) fields, so the logits of every pixel move with the
    image and nothing else changes.

    Built by :meth:`EquivariantCNN.decoder`.
    """

    def __init__(self, stages: list[list[enn.EquivariantModule]], classifier: enn.R2Conv) -> None:
        super().__init__()
        self.stages = nn.ModuleList(nn.ModuleList(stage) for stage in stages)
        self.classifier = classifier
        read_slice_bounds_on_host(self)

    def _stage(self, index: int, features: Tensor) -> Tensor:
        stage = self.stages[index]
        geometric = enn.GeometricTensor(features, stage[0].in_type)
        for layer in stage:
            geometric = layer(geometric)
        return geometric.tensor

    def _classify(self, features: Tensor) -> Tensor:
        return self.classifier(enn.GeometricTensor(features, self.classifier.in_type)).tensor

    def export(self) -> ExportedDecoder:
        """The same decoder as plain torch modules, in eval mode."""
        model = self._frozen_copy()
        stages = [nn.Sequential(*map(_export_layer, stage)) for stage in model.stages]
        return ExportedDecoder(stages, model.classifier.export()).eval()


class ExportedDecoder(_SymmetricUNetDecoder):
    """Plain-torch :class:`EquivariantDecoder` (from its ``export()``)."""

    def __init__(self, stages: list[nn.Module], classifier: nn.Module) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.classifier = classifier

    def _stage(self, index: int, features: Tensor) -> Tensor:
        return self.stages[index](features)

    def _classify(self, features: Tensor) -> Tensor:
        return self.classifier(features)


class ExportedEncoder(nn.Module):
    """Plain-torch :meth:`EquivariantCNN.encode` (from ``export_encoder()``)."""

    def __init__(self, mask: nn.Module, layers: list[nn.Module], pools: list[int]) -> None:
        super().__init__()
        self.mask = mask
        self.layers = nn.ModuleList(layers)
        self.pools = set(pools)

    def encode(self, images: Tensor) -> Pyramid:
        features, skips = self.mask(images), []
        for index, layer in enumerate(self.layers):
            if index in self.pools:
                skips.append(features)
            features = layer(features)
        return Pyramid(skips, features, [None] * len(skips))

    forward = encode
