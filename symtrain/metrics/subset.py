"""Which images a measurement reads: a seeded, class-stratified subset of the split."""

from __future__ import annotations

import torch
from torch import Tensor


def stratified_subset(labels: Tensor, count: int, seed: int = 0) -> Tensor:
    """Indices of ``count`` images, the classes taking turns (each in a seeded random order), so
    that every class is as equally represented as the split allows, whatever the split's order
    (class-sorted folders included); the same indices for the same labels and seed.

    Examples:
        >>> labels = torch.tensor([0] * 6 + [1] * 6 + [2] * 2)
        >>> sorted(labels[stratified_subset(labels, 6)].tolist())
        [0, 0, 1, 1, 2, 2]
        >>> torch.equal(stratified_subset(labels, 6), stratified_subset(labels, 6))
        True
    """
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    turns = []  # (turn within its class, tie-break, index) per image
    for label in labels.unique():
        members = (labels == label).nonzero()[:, 0]
        members = members[torch.randperm(len(members), generator=generator)]
        turns.append(torch.stack([torch.arange(len(members)), members], dim=1))
    order = torch.cat(turns)
    tie_break = torch.rand(len(order), generator=generator)
    # within one turn the classes come in a seeded random order
    rank = order[:, 0].double() + tie_break.double() * 0.5
    return order[rank.argsort(), 1][:count]
