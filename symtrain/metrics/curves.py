"""The task's score against rotation angle and against shift."""

from __future__ import annotations

import torch

from symtrain.metrics.base import Batch, Measure, Record
from symtrain.metrics.functional import measured_masks, visible_region
from symtrain.transforms import Rotation, Shift, TransformFamily


class Curves(Measure):
    """Score against rotation angle (every ``angle_step`` degrees, on the disk, masked once
    after the rotation) and against horizontal and diagonal shift (0..``max_shift`` pixels, by
    (0, k) and (k, k), on a canvas zero-padded by ``max_shift``: the shift family's protocol,
    so nothing leaves the frame; Zhang 2019 plots the diagonal); accuracy for classification,
    mIoU on the pixels both views see for segmentation. Measured at test, once per run
    (``summary.json``'s ``curves``, wandb line plots).
    """

    key = "curve"
    needs = frozenset({"labels"})
    title = "curves"
    stages = ("test",)
    table = False
    per_family = False  # its own families, whichever the run measures
    # curve name -> (the axis it is drawn against, the axis' label in figures)
    axes = {
        "rotation": ("angle", "rotation angle (degrees, on the disk)"),
        "shift": ("pixels", "horizontal shift (pixels, on a zero-padded canvas)"),
        "shift_diagonal": (
            "pixels",
            "diagonal shift (k, k) (pixels along each axis, on a zero-padded canvas)",
        ),
    }

    @classmethod
    def describe(cls) -> dict:
        """Also each curve's axis and label, which the report draws them with."""
        axes = {name: {"axis": axis, "label": label} for name, (axis, label) in cls.axes.items()}
        return {**super().describe(), "axes": axes}

    def update(self, batch: Batch, family: TransformFamily | None, record: Record, prefix: str) -> None:
        points: list[tuple[str, str, TransformFamily, torch.Tensor]] = []
        if self.settings.angle_step > 0:
            for angle in torch.arange(0.0, 360.0, self.settings.angle_step).tolist():
                points.append(("rotation", f"{angle:g}", Rotation(), torch.tensor([angle])))
        m = self.settings.max_shift
        if m > 0:
            for pixels in range(m + 1):
                points.append(("shift", str(pixels), Shift(m), torch.tensor([0.0, float(pixels)])))
                points.append(("shift_diagonal", str(pixels), Shift(m), torch.tensor([float(pixels)] * 2)))
        for curve, at, family, element in points:
            elements = batch.elements(element)
            if isinstance(family, Shift):
                logits = batch.shifted(m, int(element[0]), int(element[1]))
            else:
                logits = batch.net(family.measured(batch.images, elements))
            name = f"{prefix}/equiv/{curve}/{self.key}/{at}"
            if not batch.segmentation:
                record.mean(name, (logits.argmax(dim=1) == batch.targets).float())
                continue
            moved = measured_masks(family, batch.targets, elements, batch.num_classes)
            seen = visible_region(family, elements, batch.images)
            record.iou(name, batch.num_classes, logits.argmax(dim=1), moved, seen)
