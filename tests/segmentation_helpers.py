"""What the segmentation tests share."""

from __future__ import annotations

import torch
from torch import nn


def trained_briefly(net: nn.Module, size: int) -> nn.Module:
    """A few optimiser steps, so batch-norm statistics and weights are not the symmetric init."""
    optimiser = torch.optim.SGD(net.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        images = torch.rand(4, 1, size, size, generator=generator)
        targets = torch.randint(0, 3, (4, size, size), generator=generator)
        loss = nn.functional.cross_entropy(net(images), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return net.eval()
