"""Whether the prediction survives the family: consistency (Zhang 2019; Chaman & Dokmanić 2021)
and, for segmentation, mask consistency."""

from __future__ import annotations

from symtrain.metrics.base import Batch, Measure, Record
from symtrain.metrics.functional import agreement
from symtrain.transforms import TransformFamily


class Consistency(Measure):
    """Share of images whose predicted class is the same for two independent random elements
    g₁, g₂ of the family, drawn per image (Zhang 2019's and Chaman & Dokmanić 2021's
    consistency), averaged over ``draws`` pairs per image: 100% when no element changes the
    prediction. Elements are the family's random ones: shifts uniform in [-m, m)², circular for
    circular_shift; rot90 and flip any element, the identity included (so 0° is also compared
    with 180°). The draws are seeded: every run of the same data draws the same pairs.
    """

    key = "consistency"
    title = "consistency"
    caption = "Consistency (%): same predicted class for two random elements of the family"
    tasks = ("classification",)
    scale, digits = 100.0, 1

    def update(self, batch: Batch, family: TransformFamily, record: Record, prefix: str) -> None:
        for draw in range(self.settings.draws):
            first, second = batch.sample(family, 2 * draw), batch.sample(family, 2 * draw + 1)
            predicted = [batch.views(family, elements).argmax(dim=1) for elements in (first, second)]
            record.mean(f"{prefix}/{self.key}", agreement(*predicted))


class MaskConsistency(Measure):
    """Share of the pixels both views see whose predicted class agrees between f(g·x) and
    g·f(x) (the prediction for the moved image, and the moved prediction), for each of the
    family's test elements g: 100% when the predicted mask follows the transformation.
    """

    key = "consistency"
    title = "mask consistency"
    caption = "Mask consistency (%): pixels whose predicted class follows the transformation"
    tasks = ("segmentation",)
    scale, digits = 100.0, 1

    def update(self, batch: Batch, family: TransformFamily, record: Record, prefix: str) -> None:
        reference = batch.reference(family)
        for elements, logits in batch.test_views(family):
            seen = batch.visible(family, elements)
            expected = family.apply(reference, elements).argmax(dim=1)
            record.mean(f"{prefix}/{self.key}", agreement(logits.argmax(dim=1), expected, seen))
