"""The symmetry-strategy contract: how a model is meant to get its symmetry."""

from __future__ import annotations

import copy
from typing import Any, ClassVar, overload

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from symtrain.backbones.base import Backbone
from symtrain.transforms import Symmetries, TransformFamily


class SymmetryStrategy(nn.Module):
    """Base class of symmetry strategies.

    A strategy names the transformation families it is about, may check the backbone it is
    composed with (:meth:`check`, called once when the model is built), may transform
    training batches on their device (:meth:`augment`, called only while training), and may
    wrap the network (:meth:`wrap`, called once when the model is built): the wrapper is then
    the network everywhere, in training and evaluation steps, measurements, ``predict``,
    ``load_model`` and its export.

    Args:
        families: the transformation families this strategy targets.

    Attributes:
        examples: arguments of instances the contract tests build, one per form worth testing.
    """

    examples: ClassVar[tuple[dict[str, Any], ...]] = ({},)

    def __init__(self, families: list[TransformFamily] | None = None) -> None:
        super().__init__()
        self.families = list(families or [])

    def check(self, backbone: Backbone, image_size: int | None = None, dense: bool = False) -> None:
        """Raise :class:`~symtrain.errors.SymtrainError` if ``backbone`` cannot serve this strategy
        (on images of side ``image_size``, when known; in its dense form, per-pixel logits,
        when ``dense``)."""

    @overload
    def augment(self, images: Tensor) -> Tensor: ...

    @overload
    def augment(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]: ...

    def augment(self, images: Tensor, masks: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Transform training ``images`` (B, C, H, W), floats in [0, 1], and with them their
        ``masks`` (B, H, W) of class indices when given (then both are returned)."""
        return images if masks is None else (images, masks)

    def guarantees(self) -> Symmetries:
        """What the network :meth:`wrap` returns is by construction when evaluated, family by
        family (the contract tests measure every ``exact`` claim); none by default."""
        return {}

    def wrap(self, net: nn.Module) -> nn.Module:
        """The network this strategy trains and evaluates, built around ``net`` (images in
        [0, 1] to logits); ``net`` itself unless the strategy changes how it is evaluated.
        A wrapper is a :class:`StrategyNet`."""
        return net

    def extra_repr(self) -> str:
        return f"families={self.families}"


class StrategyNet(nn.Module):
    """A network that a strategy builds around the plain one, ``inner`` (a ``SymmetryNet`` or
    ``SegmentationNet``): images in [0, 1] (B, C, H, W) to logits, (B, K) or (B, K, H, W).

    Its ``backbone`` is the inner network's, so checks and checkpoint handling read it as for a
    plain network; it has no ``normalize`` or ``head`` of its own, so the layer-wise measures,
    which decompose a plain network into its layers, leave it out. A wrapper that decides
    something per input (a canonical pose) says what in :meth:`choices`, and a wrapper with a
    regularisation returns it, weighted, from :meth:`penalty` (added to the training loss).

    Attributes:
        element_labels: names of the elements :meth:`choices` indexes (empty: it chooses none).
    """

    element_labels: tuple[str, ...] = ()

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    @property
    def backbone(self) -> Backbone:
        return self.inner.backbone

    def penalty(self) -> Tensor | None:
        """The weighted regularisation of the last forward pass, or None."""
        return None

    def choices(self) -> Tensor | None:
        """Per input of the last forward pass, the index of the element chosen for it, (B,)."""
        return None

    def export(self) -> StrategyNet:
        """The same wrapper around the inner network's plain-torch export, in eval mode."""
        clone = copy.copy(self)
        clone._modules = dict(self._modules)  # a shallow copy shares the dict of submodules
        clone.inner = self.inner.export()
        return clone.eval()


class StrategyStatistics(Metric):
    """What a :class:`StrategyNet` chose over an epoch, reduced across processes: the share of
    inputs it mapped to each element (the identity first) and the mean of its penalty.

    Args:
        labels: the elements' names (:attr:`StrategyNet.element_labels`).
    """

    full_state_update = False

    def __init__(self, labels: tuple[str, ...]) -> None:
        super().__init__()
        self.labels = labels
        self.add_state("counts", torch.zeros(max(len(labels), 1)), dist_reduce_fx="sum")
        self.add_state("penalty_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("penalty_count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, chosen: Tensor | None, penalty: Tensor | None) -> None:  # type: ignore[override]
        """One forward pass's :meth:`StrategyNet.choices` and :meth:`StrategyNet.penalty`."""
        if chosen is not None and self.labels:
            self.counts += torch.bincount(chosen.detach(), minlength=len(self.labels)).to(self.counts)
        if penalty is not None:
            self.penalty_sum += penalty.detach()
            self.penalty_count += 1

    def compute(self) -> dict[str, Tensor]:
        logs: dict[str, Tensor] = {}
        if self.labels:
            shares = self.counts / self.counts.sum().clamp_min(1)
            logs["canonical/identity_share"] = shares[0]
            for label, share in zip(self.labels, shares, strict=True):
                logs[f"canonical/share/{label}"] = share
        if self.penalty_count > 0:
            logs["canonical/prior_loss"] = self.penalty_sum / self.penalty_count
        return logs


class NoSymmetry(SymmetryStrategy):
    """No augmentation and no requirement: whatever symmetry the backbone has by itself.

    Examples:
        >>> import torch
        >>> x = torch.rand(2, 1, 8, 8)
        >>> torch.equal(NoSymmetry().augment(x), x)
        True
    """

    def __init__(self) -> None:
        super().__init__()
