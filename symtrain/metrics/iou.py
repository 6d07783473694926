"""Intersection over union with a confusion matrix counted on the device, without host syncs."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassJaccardIndex

# Mask value of pixels that mIoU leaves out (outside the region both views see).
IGNORE = -1


class JaccardIndex(MulticlassJaccardIndex):
    """torchmetrics' multiclass IoU (states, DDP reduction and compute unchanged) whose update
    counts the confusion matrix with ``index_add_``. torchmetrics counts with
    ``torch.bincount`` and drops ``ignore_index`` pixels with a boolean mask, and on a GPU both
    read values on the host: a sync at every update. Here ignored pixels are counted in an
    overflow bin that is dropped. Under deterministic algorithms (where ``index_add_`` is not
    allowed on a GPU) torchmetrics' own deterministic update is used.

    Examples:
        >>> iou = JaccardIndex(3, ignore_index=-1, validate_args=False)
        >>> iou.update(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [1, -1]]))
        >>> iou.confmat.tolist()
        [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    """

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add class maps ``preds`` (or logits with a class dimension after the batch's) against
        ``target``."""
        if preds.dim() == target.dim() + 1:
            preds = preds.argmax(dim=1)
        if torch.are_deterministic_algorithms_enabled():
            super().update(preds, target)
            return
        # preds and target: class indices of the same shape (rows: target, columns: pred)
        k = self.num_classes
        target, preds = target.reshape(-1).long(), preds.reshape(-1).long()
        bins = target * k + preds
        if self.ignore_index is not None:
            bins = bins.masked_fill(target == self.ignore_index, k * k)
        counts = torch.zeros(k * k + 1, dtype=self.confmat.dtype, device=bins.device)
        counts.index_add_(0, bins, torch.ones_like(bins))
        self.confmat += counts[:-1].view(k, k)
