"""The task's score under a family's test elements."""

from __future__ import annotations

from symtrain.metrics.base import Batch, Measure, Record
from symtrain.metrics.functional import agreement, measured_masks
from symtrain.transforms import TransformFamily


class Accuracy(Measure):
    """Accuracy on the measured subset after each of the family's test elements g is applied
    (on the family's frame), averaged over images and elements."""

    key = "acc"
    needs = frozenset({"labels"})
    title = "accuracy under a family"
    caption = "Test accuracy (%) under each family"
    tasks = ("classification",)
    scale, digits, table = 100.0, 1, False  # the report's score table shows it

    def update(self, batch: Batch, family: TransformFamily, record: Record, prefix: str) -> None:
        for _, logits in batch.test_views(family):
            record.mean(f"{prefix}/{self.key}", (logits.argmax(dim=1) == batch.targets).float())


class SegmentationScore(Measure):
    """Pixel accuracy (``acc``) and mean intersection over union (``miou``, background
    included) of f(g·x) against the moved masks g·y, for each of the family's test elements g,
    on the pixels both views see."""

    key = "acc"
    needs = frozenset({"labels"})
    title = "mIoU and pixel accuracy under a family"
    caption = "Test mIoU (%) under each family"
    tasks = ("segmentation",)
    scale, digits, table = 100.0, 1, False  # the report's score table shows it

    def update(self, batch: Batch, family: TransformFamily, record: Record, prefix: str) -> None:
        for elements, logits in batch.test_views(family):
            predicted = logits.argmax(dim=1)  # (B, h, w)
            targets = measured_masks(family, batch.targets, elements, batch.num_classes)
            seen = batch.visible(family, elements)
            record.mean(f"{prefix}/acc", agreement(predicted, targets, seen))
            record.iou(f"{prefix}/miou", batch.num_classes, predicted, targets, seen)
