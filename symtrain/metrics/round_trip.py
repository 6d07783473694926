"""What resampling the pixel grid costs the model itself: the round-trip error."""

from __future__ import annotations

from symtrain.metrics.base import Batch, Measure, Record
from symtrain.metrics.functional import SpreadRelativeError, frame_region
from symtrain.transforms import TransformFamily


class RoundTripError(Measure):
    """E‖f̃(g⁻¹·(g·x)) − f̃(x)‖² / E‖f̃(x) − f̃(z)‖², normalised like the invariance (or
    equivariance) error, for the family's test elements g: the image is warped by g and back,
    so there is no net transformation and the change is what interpolation alone costs this
    model on these images. Read the invariance error beside it: an error near the round trip's
    is within interpolation's reach; a model can legitimately score below it. Measured for
    interpolated families with an inverse (rotation), on the disk.
    """

    key = "round_trip_error"
    stages = ("test",)  # a diagnostic of the final model: the fit's trend does without its cost
    title = "round-trip error"
    caption = "Round-trip error: the same error for g⁻¹·(g·x), no net transformation (interpolation's cost)"

    def applies(self, family: TransformFamily) -> bool:
        return (
            not family.exact
            and family.frame == "disk"
            and family.inverse(family.identity()[None]) is not None
        )

    def update(self, batch: Batch, family: TransformFamily, record: Record, prefix: str) -> None:
        error = record.metric(f"{prefix}/{self.key}", SpreadRelativeError)
        reference = batch.reference(family)
        region = frame_region(family, batch.images)
        error.update_reference(reference, region if batch.segmentation else None)
        for element in family.test_elements():
            elements = batch.elements(element)
            # measured on the disk like every view (a disk family has no canvas to pad)
            back = family.measured(family.apply(batch.images, elements), family.inverse(elements))
            seen = batch.visible(family, elements) if batch.segmentation else None
            error.update(batch.net(back), reference, seen)
