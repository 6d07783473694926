"""What a model predicts and how it learns it: a class per image (classification, invariant
outputs) or a class per pixel (segmentation, equivariant outputs).

A task builds the network around the backbone, picks the targets out of a batch, computes the
loss, and names the scores that :class:`~symtrain.module.SymmetryModule` accumulates on the
device and logs once per epoch (``{stage}/acc``, and ``{stage}/miou`` for segmentation). The
module holds one and has no task-specific branches of its own.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from kornia.losses import dice_loss
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from symtrain.backbones import Backbone
from symtrain.errors import SymtrainError
from symtrain.metrics.iou import JaccardIndex
from symtrain.nets import SegmentationNet, SymmetryNet


class Classification:
    """A class per image: logits (B, K) from the pooled features, cross-entropy against the
    labels, top-1 accuracy.

    Args:
        label_smoothing: cross-entropy label smoothing.
        dice_weight: the Dice loss's weight (segmentation only; every task takes the module's
            loss settings).
    """

    name: ClassVar[str] = "classification"

    def __init__(self, label_smoothing: float = 0.0, dice_weight: float = 0.0) -> None:
        if dice_weight < 0:
            raise SymtrainError(f"model.dice_weight={dice_weight} must be >= 0 (0: cross-entropy alone)")
        self.label_smoothing = label_smoothing
        self.dice_weight = dice_weight

    def outputs(self, num_classes: int) -> int:
        """The network's number of outputs for ``num_classes`` classes of the data."""
        return num_classes

    def network(self, normalize: nn.Module, backbone: Backbone, outputs: int) -> nn.Module:
        return SymmetryNet(normalize, backbone, outputs)

    def targets(self, labels: Tensor, masks: list[Tensor]) -> Tensor:
        """What the logits are scored against: the labels (B,)."""
        return labels

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def scores(self, outputs: int) -> dict[str, Metric]:
        """The per-epoch scores by name, each updated with (logits, targets). (validate_args=False:
        the checks of the inputs' values sync with the host.)"""
        return {"acc": MulticlassAccuracy(outputs, average="micro", validate_args=False)}


class Segmentation(Classification):
    """A class per pixel, the background included as class 0 (mask value k is class k - 1):
    logits (B, K + 1, H, W) from the backbone's dense form (a U-Net), cross-entropy plus
    ``dice_weight`` x kornia's Dice loss (averaged over classes) against the masks, pixel
    accuracy and the mean over classes of the intersection over union.

    Args:
        label_smoothing: cross-entropy label smoothing.
        dice_weight: the Dice loss's weight; 0 is cross-entropy alone.
    """

    name: ClassVar[str] = "segmentation"

    def outputs(self, num_classes: int) -> int:
        return num_classes + 1  # the background

    def network(self, normalize: nn.Module, backbone: Backbone, outputs: int) -> nn.Module:
        return SegmentationNet(normalize, backbone, outputs)

    def targets(self, labels: Tensor, masks: list[Tensor]) -> Tensor:
        if not masks:
            raise SymtrainError(
                "segmentation needs masks but the batches have none: use data that has masks "
                "(SyntheticShapes, or ImageFolder with masks_root)"
            )
        return masks[0]  # (B, H, W)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        loss = super().loss(logits, targets)
        if self.dice_weight:
            loss = loss + self.dice_weight * dice_loss(logits, targets, average="macro")
        return loss

    def scores(self, outputs: int) -> dict[str, Metric]:
        return {**super().scores(outputs), "miou": JaccardIndex(outputs, validate_args=False)}


TASKS: dict[str, type[Classification]] = {task.name: task for task in (Classification, Segmentation)}
