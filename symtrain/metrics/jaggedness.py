"""How often a one-pixel shift changes the prediction (Azulay & Weiss 2019)."""

from __future__ import annotations

from symtrain.metrics.base import Batch, Measure, Record
from symtrain.transforms import Shift, TransformFamily


class Jaggedness(Measure):
    """Share of consecutive one-pixel shifts that change the predicted class (Azulay & Weiss
    2019, "Why do deep convolutional networks generalize so poorly to small image
    transformations?"): along the horizontal path (0, k) and the diagonal path (k, k),
    k = 0..``max_shift``, on a canvas zero-padded by ``max_shift`` (the score-vs-shift curve's
    views); 0% when no one-pixel step changes the prediction. Measured for the zero-fill shift
    family.
    """

    key = "jaggedness"
    title = "jaggedness"
    caption = "Jaggedness (%): one-pixel shifts that change the predicted class (0 = smooth)"
    tasks = ("classification",)
    stages = ("test",)
    scale, digits = 100.0, 1

    def applies(self, family: TransformFamily) -> bool:
        return isinstance(family, Shift) and self.settings.max_shift > 0

    def update(self, batch: Batch, family: TransformFamily, record: Record, prefix: str) -> None:
        m = self.settings.max_shift
        for path in ((0, 1), (1, 1)):  # (dy, dx) per step
            predicted = [batch.shifted(m, path[0] * k, path[1] * k).argmax(dim=1) for k in range(m + 1)]
            for before, after in zip(predicted, predicted[1:], strict=False):
                record.mean(f"{prefix}/{self.key}", (before != after).float())
