"""Segmentation consistency under two random shifts: mASSC."""

from __future__ import annotations

import torch

from symtrain.metrics.base import Batch, Measure, Record
from symtrain.metrics.functional import agreement, visible_region
from symtrain.transforms import CircularShift, Shift, TransformFamily


class ShiftSegmentationConsistency(Measure):
    """mASSC, the mean average semantic segmentation consistency (Rojas-Gomez et al. 2022,
    learnable polyphase sampling; after Chaman & Dokmanić 2021's consistency): the share of
    pixels whose predicted class agrees between two independently shifted copies g₁·x and g₂·x
    of the image once aligned, on the pixels both views see (their overlap; all of them for
    circular shifts), averaged over ``draws`` random pairs per image (uniform in [-m, m)², on
    the family's frame): 100% for a segmentation that moves with every shift.
    """

    key = "massc"
    title = "mASSC"
    caption = "mASSC (%): pixels whose predicted class agrees between two randomly shifted copies, aligned"
    tasks = ("segmentation",)
    scale, digits = 100.0, 1

    def applies(self, family: TransformFamily) -> bool:
        return isinstance(family, (Shift, CircularShift))

    def update(self, batch: Batch, family: TransformFamily, record: Record, prefix: str) -> None:
        count = len(batch.images)
        for draw in range(self.settings.draws):
            first, second = batch.sample(family, 2 * draw), batch.sample(family, 2 * draw + 1)
            views = family.measured(batch.images.repeat(2, 1, 1, 1), torch.cat([first, second]))
            logits = batch.net(views)
            relative = second - first  # moves the first view onto the second
            aligned = family.apply(logits[:count], relative).argmax(dim=1)
            seen = visible_region(family, relative, batch.images)
            record.mean(f"{prefix}/{self.key}", agreement(aligned, logits[count:].argmax(dim=1), seen))
