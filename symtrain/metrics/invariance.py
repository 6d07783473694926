"""How far the output moves under a family: the invariance error (classification) and the
equivariance error (segmentation)."""

from __future__ import annotations

from symtrain.metrics.base import Batch, Measure, Record
from symtrain.metrics.functional import SpreadRelativeError, frame_region
from symtrain.transforms import TransformFamily


class InvarianceError(Measure):
    """E‖f̃(g·x) − f̃(x)‖² / E‖f̃(x) − f̃(z)‖², f̃ the logits centred over the classes, x and z two different
    images of the measured subset, g the family's test elements: the squared change of the
    logits under g relative to the squared distance between two images' logits (Petrini et al.
    2021's normalisation). 0 when the logits do not change, about 1 when g moves them as far as
    another image would; a constant added to the logits, or their scale, changes nothing.

    Ratio of means over images and elements (no per-image division, so an image with small
    logits cannot dominate); x and g·x are both taken on the family's frame (the disk, once,
    after the action for interpolated families; a zero-padded canvas for zero-fill shifts).
    """

    key = "invariance_error"
    title = "invariance error"
    caption = "Invariance error of the logits (relative to the spread between images; 0 = invariant)"
    tasks = ("classification",)

    def update(self, batch: Batch, family: TransformFamily, record: Record, prefix: str) -> None:
        error = record.metric(f"{prefix}/{self.key}", SpreadRelativeError)
        reference = batch.reference(family)
        error.update_reference(reference)
        for _, logits in batch.test_views(family):
            error.update(logits, reference)


class EquivarianceError(Measure):
    """E‖f̃(g·x) − g·f̃(x)‖² / E‖f̃(x) − f̃(z)‖² per pixel, f̃ the per-pixel logits centred over the
    classes, on the pixels both views see (inside the frame or the disk), relative to the
    squared distance between two different images' logits at the same pixel (averaged over
    the frame's pixels). 0 when the predicted map moves exactly with the image.
    """

    key = "equivariance_error"
    title = "equivariance error"
    caption = (
        "Equivariance error of the per-pixel logits (relative to the spread between images; 0 = equivariant)"
    )
    tasks = ("segmentation",)

    def update(self, batch: Batch, family: TransformFamily, record: Record, prefix: str) -> None:
        error = record.metric(f"{prefix}/{self.key}", SpreadRelativeError)
        reference = batch.reference(family)
        error.update_reference(reference, frame_region(family, batch.images))
        for elements, logits in batch.test_views(family):
            seen = batch.visible(family, elements)
            error.update(logits, family.apply(reference, elements), seen)
