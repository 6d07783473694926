"""escnn's convolution filters: solved with an exact SVD, and their eval-mode cache kept out of
state dicts."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from symtrain._lazy import lazy_module

if TYPE_CHECKING:
    from escnn import nn as enn
else:  # escnn is imported when the first EquivariantCNN is built, not by every symtrain command
    enn = lazy_module("escnn.nn")


def use_exact_svd_in_escnn() -> None:
    """Make escnn solve for kernel bases with scipy's exact SVD, its own fallback.

    Whenever scikit-learn is importable, escnn uses scikit-learn's *randomized* SVD instead: an
    approximation, which recent scikit-learn (1.9, for one) refuses outright on the ``np.matrix``
    escnn passes it (``TypeError: np.matrix is not supported``), so a D_N model could not be
    built on a machine that merely has scikit-learn installed.
    """
    from escnn.group import _numerical

    _numerical.randomized_svd = None


def without_filter_cache(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` without escnn's cache of expanded filters: R2Conv registers ``filter`` and
    ``expanded_bias`` buffers in eval mode and deletes them in train mode (:class:`_EscnnFilters`
    keeps them out of its own state dicts; older checkpoints may hold them). They are
    recognised by their sibling ``weights``, the name escnn gives an R2Conv's parameters.

    Examples:
        >>> sorted(without_filter_cache({"conv.weights": 0, "conv.filter": 1, "norm.filter": 2}))
        ['conv.weights', 'norm.filter']
    """
    return {
        key: value
        for key, value in state.items()
        if not (
            key.rpartition(".")[2] in ("filter", "expanded_bias")
            and f"{key.rpartition('.')[0]}.weights" in state
        )
    }


def _drop_cached_filters(state: dict[str, Any], prefix: str) -> None:
    for key in [k for k in state if k.startswith(prefix) and k.endswith((".filter", ".expanded_bias"))]:
        del state[key]


class _EscnnFilters(nn.Module):
    """Holds escnn convolutions whose filter cache stays out of state dicts.

    escnn caches expanded filters as buffers in eval mode only, so a state dict's keys would
    depend on the mode it was saved in. The cache is kept out of state dicts (non-persistent),
    dropped from incoming ones, and rebuilt from newly loaded weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_state_dict_pre_hook(lambda module, prefix, keep_vars: module._cache_is_not_state())
        self._register_load_state_dict_pre_hook(self._before_load)
        self.register_load_state_dict_post_hook(lambda module, keys: module._refresh_filters())

    def _frozen_copy(self) -> _EscnnFilters:
        """A deep copy in eval mode (escnn's filters expanded once), this module left as it was."""
        training = self.training
        self.train(True)  # drops escnn's filter cache, which may hold an autograd graph
        model = copy.deepcopy(self).eval()
        self.train(training)
        return model

    def train(self, mode: bool = True) -> _EscnnFilters:
        # escnn expands and caches the filters when switching to eval mode; without no_grad the
        # cache would hold an autograd graph (memory, and deepcopy refuses non-leaf tensors).
        with torch.no_grad():
            return super().train(mode)

    def _before_load(self, state: dict[str, Any], prefix: str, *args: Any) -> None:
        _drop_cached_filters(state, prefix)
        self._cache_is_not_state()

    def _cache_is_not_state(self) -> None:
        for module in self.modules():
            if isinstance(module, enn.R2Conv):
                module._non_persistent_buffers_set.update({"filter", "expanded_bias"})

    def _refresh_filters(self) -> None:
        for module in self.modules():
            if isinstance(module, enn.R2Conv) and not module.training:
                module.train(True)
                with torch.no_grad():
                    module.train(False)
