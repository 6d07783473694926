"""Checks that keep multi-process training correct."""

from __future__ import annotations

import hashlib
from itertools import chain

import lightning.pytorch as pl
import torch
from torch import nn

from symtrain.errors import SymtrainError


def model_signature(module: nn.Module) -> str:
    """A digest of the names, shapes and dtypes of every parameter and buffer, in order.

    Examples:
        >>> model_signature(nn.Linear(2, 3)) == model_signature(nn.Linear(2, 3))
        True
        >>> model_signature(nn.Linear(2, 3)) == model_signature(nn.Linear(3, 2))
        False
    """
    entries = chain(module.named_parameters(), module.named_buffers())
    text = "\n".join(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}" for name, tensor in entries)
    return hashlib.sha256(text.encode()).hexdigest()


def check_same_model_on_every_rank(module: nn.Module, trainer: pl.Trainer) -> None:
    """Fail with a clear message if the processes of a distributed run built different models.

    DDP assumes identical parameter lists and silently mixes up gradients otherwise.
    """
    if trainer.world_size < 2:
        return
    digest = torch.tensor(int(model_signature(module)[:15], 16), device=trainer.strategy.root_device)
    digests = trainer.strategy.all_gather(digest)
    if not bool((digests == digests.flatten()[0]).all()):
        raise SymtrainError(
            "the processes of this distributed run built different models (their parameter and "
            "buffer lists differ): start every process with the same PYTHONHASHSEED, e.g. "
            "export PYTHONHASHSEED=0 (python -m symtrain does this itself)"
        )
