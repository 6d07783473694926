"""Segmentation consistency under a random shift: mASSC (Rojas-Gomez et al. 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from symtrain.metrics.base import Batch, Measure, Record
from symtrain.metrics.functional import agreement
from symtrain.transforms import CircularShift, Shift, TransformFamily

# Seeds mASSC's shifts apart from the draws of ``consistency`` (Batch.sample), so that the two
# measures do not share their random elements.
SEED_OFFSET = 7_919


def reference_shifts(batch: Batch, family: Shift | CircularShift, draw: int) -> Tensor:
    """Draw ``draw`` of mASSC's shifts for the batch's images, (B, 2) (dy, dx) on their device:
    integers uniform in [-m, m]² (both ends included, the reference's
    ``np.random.randint(-max_shift, max_shift + 1, size=2)``), multiples of the stride for a
    strided circular family. Seeded by the image's place in the whole subset, like
    :meth:`Batch.sample`, so an image gets the same shifts however the subset is cut.

    Examples:
        >>> batch = Batch(None, torch.zeros(3, 1, 4, 4), None, True, 2, torch.arange(3), 3, 0)
        >>> shifts = reference_shifts(batch, CircularShift(8, stride=4), 0)
        >>> shifts.shape, bool((shifts % 4 == 0).all()), bool((shifts.abs() <= 8).all())
        (torch.Size([3, 2]), True, True)
    """
    stride = family.stride if isinstance(family, CircularShift) else 1
    reach = family.max_pixels // stride
    generator = torch.Generator().manual_seed(batch.seed * 1_000_003 + SEED_OFFSET + draw)
    everyone = torch.randint(-reach, reach + 1, (batch.subset_size, 2), generator=generator) * stride
    return everyone[batch.positions.cpu()].float().to(batch.images.device)


class ShiftSegmentationConsistency(Measure):
    """mASSC, the mean average semantic segmentation consistency (Rojas-Gomez et al. 2022,
    learnable polyphase sampling; after Chaman & Dokmanić 2021), by the protocol of the
    paper's code (learn_poly_sampling, ``BaseSegmentation._shifts`` and ``models/metrics/massc.py``):
    the share of pixels whose predicted class agrees between the image x and one shifted copy
    g·x, once the prediction for x is moved by g, over the pixels that stay in the image; the
    mean over images and over ``draws`` shifts per image, uniform integers in [-m, m]² (both
    ends included). Everything on the image's own H x W frame, no canvas: for ``shift``, g·x is
    the zero-fill shift and the (H − |dy|)(W − |dx|) pixels that hold the image's content in
    both views are compared (the reference's ``mASSC``); for ``circular_shift`` nothing leaves,
    and all H·W pixels are (``mASSC_circular``; multiples of the stride for a strided family).
    100% for a segmentation that moves with every shift; a share of pixels.

    The reference draws one shift per batch and shift index; here each image draws its own
    (seeded by its place in the subset: the same expectation, whatever the batching).
    """

    key = "massc"
    title = "mASSC"
    caption = "mASSC (%): pixels whose predicted class follows one random shift, on the pixels that stay"
    tasks = ("segmentation",)
    scale, digits = 100.0, 1

    def applies(self, family: TransformFamily) -> bool:
        return isinstance(family, (Shift, CircularShift))

    def update(self, batch: Batch, family: TransformFamily, record: Record, prefix: str) -> None:
        assert isinstance(family, (Shift, CircularShift))
        images = batch.images
        # The prediction for the image as it is: the grid frame's reference view (shared with
        # the other measures that read it); never the shift family's padded canvas.
        unshifted = batch.reference(CircularShift())
        frame = torch.ones_like(images[:, :1])
        for draw in range(self.settings.draws):
            shifts = reference_shifts(batch, family, draw)
            # Shift.apply on the unpadded images is the zero-fill shift, CircularShift's the roll
            predicted = batch.net(family.apply(images, shifts)).argmax(dim=1)
            expected = family.apply(unshifted, shifts).argmax(dim=1)
            # the pixels whose content came from inside the image (all of them for a roll)
            stays = family.apply(frame, shifts) > 0.5
            record.mean(f"{prefix}/{self.key}", agreement(predicted, expected, stays))
