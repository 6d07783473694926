"""Pure-torch pieces the measures share (no Lightning, no numpy round trips).

Every function works on batches on the model's device, so the measures can accumulate them
in torchmetrics states, which reduce correctly across processes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from symtrain.transforms import TransformFamily, disk_mask

__all__ = ["SpreadRelativeError", "agreement", "centred", "disk_mask", "measured_masks", "visible_region"]


def centred(logits: Tensor) -> Tensor:
    """Logits minus their mean over the classes (dim 1): a constant added to every class, which
    changes no probability, changes nothing here.

    Examples:
        >>> centred(torch.tensor([[1.0, 3.0], [11.0, 13.0]])).tolist()
        [[-1.0, 1.0], [-1.0, 1.0]]
    """
    return logits - logits.mean(dim=1, keepdim=True)


class SpreadRelativeError(Metric):
    """E ‖a(g·x) − a(x)‖² / E_{x≠z} ‖a(x) − a(z)‖²: the mean squared change of the outputs a under
    the transformation, relative to the mean squared distance between the outputs of two
    different images of the same subset (the normalisation of Petrini et al. 2021's D_f).

    ``a`` is the centred logits (``centre``) or the feature map as it is. For dense outputs
    (B, K, *S) both means are per position: the numerator over the positions ``where`` both views
    are seen, the denominator over the reference's ``region``. 0 for an invariant (equivariant)
    map; about 1 when g moves the output as far as swapping the image for another. The
    denominator is exact over all pairs of the subset: 2n/(n-1) (E‖a‖² − ‖E a‖²).

    Examples:
        >>> error = SpreadRelativeError()
        >>> reference = torch.tensor([[0.0, 2.0], [2.0, 0.0]])  # centred distance² between them: 8
        >>> error.update_reference(reference)
        >>> error.update(reference + torch.tensor([[1.0, -1.0], [0.0, 0.0]]), reference)
        >>> error.compute().item()  # (2 + 0) / 2 / 8
        0.125
    """

    full_state_update = False

    def __init__(self, centre: bool = True) -> None:
        super().__init__()
        self.centre = centre
        self.region: Tensor | None = None
        for name in ("squared", "positions", "outputs", "norms", "images"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _prepare(self, outputs: Tensor) -> Tensor:
        outputs = outputs.double()
        return centred(outputs) if self.centre else outputs

    def update(self, moved: Tensor, expected: Tensor, where: Tensor | None = None) -> None:
        """Add the squared change of ``moved`` against ``expected`` (B, K, *S), counted where
        ``where`` (B, 1, *S) is true."""
        squared = (self._prepare(moved) - self._prepare(expected)).pow(2).sum(dim=1)  # (B, *S)
        if where is None:
            self.squared += squared.sum()
            self.positions += squared.numel()
        else:
            where = where[:, 0].to(squared.dtype)
            self.squared += (squared * where).sum()
            self.positions += where.sum()

    def update_reference(self, outputs: Tensor, region: Tensor | None = None) -> None:
        """Add the reference outputs (B, K, *S) of one batch; ``region`` (*S) bool: the
        positions the spread is averaged over (all when None)."""
        a = self._prepare(outputs)
        self.outputs = self.outputs + a.sum(dim=0)  # (K, *S)
        self.norms = self.norms + a.pow(2).sum(dim=1).sum(dim=0)  # (*S)
        self.images += len(a)
        self.region = region

    def compute(self) -> Tensor:
        n = self.images
        mean = self.outputs / n
        spread = 2 * n / (n - 1) * (self.norms / n - mean.pow(2).sum(dim=0))  # (*S)
        if self.region is not None:
            spread = spread[self.region.to(spread.device)]
        # 0 when nothing moved, even for a constant model (whose spread is 0 too)
        return torch.where(self.squared == 0, 0.0, (self.squared / self.positions) / spread.mean())


def agreement(predictions: Tensor, other: Tensor, where: Tensor | None = None) -> Tensor:
    """Per-sample agreement of two predictions: 1.0 or 0.0 for classes (B,) (the consistency of
    Zhang 2019), the share of agreeing pixels for class maps (B, H, W), counted only where
    ``where`` (B, 1, H, W) is true when given (the region both views see).

    Examples:
        >>> agreement(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])).tolist()
        [1.0, 0.0, 1.0]
        >>> maps = torch.tensor([[[1, 2], [3, 4]]])
        >>> agreement(maps, torch.tensor([[[1, 0], [3, 0]]])).tolist()
        [0.5]
        >>> agreement(maps, torch.tensor([[[1, 0], [3, 0]]]), torch.tensor([[[[1, 0], [1, 0]]]])).tolist()
        [1.0]
    """
    same = (predictions == other).float()
    if same.dim() == 1:
        return same
    same = same.flatten(1)  # (B, H * W)
    if where is None:
        return same.mean(dim=1)
    where = where.flatten(1).to(same.dtype)
    return (same * where).sum(dim=1) / where.sum(dim=1).clamp_min(1)


def frame_region(family: TransformFamily, images: Tensor) -> Tensor:
    """Where ``family``'s measurement frame holds image content, (h, w) bool: the inscribed
    disk for ``disk`` families, everything otherwise (a canvas's zero border is content too:
    the same zeros in every view)."""
    frame = family.canvas(images[:1, :1])
    ones = torch.ones_like(frame)
    return (disk_mask(ones) > 0.999)[0, 0] if family.frame == "disk" else ones[0, 0].bool()


def visible_region(family: TransformFamily, elements: Tensor, images: Tensor) -> Tensor:
    """Where both the reference view and the view moved by ``elements`` hold content, on the
    family's frame: (B, 1, h, w) bool. The frame's region (the disk, or all of it) is moved by
    the elements and intersected with itself, so pixels a transformation brings in from
    outside the frame (zero fill) or from outside the disk are left out.

    Examples:
        >>> from symtrain.transforms import CircularShift, Rotation
        >>> seen = visible_region(CircularShift(), torch.tensor([[0.0, 2.0]]), torch.zeros(1, 1, 4, 4))
        >>> bool(seen.all())
        True
        >>> seen = visible_region(Rotation(), torch.tensor([[45.0]]), torch.zeros(1, 1, 9, 9))
        >>> bool(seen[0, 0, 4, 4]), bool(seen[0, 0, 0, 0])
        (True, False)
    """
    region = frame_region(family, images).to(images.dtype)  # (h, w)
    inside = region.expand(len(elements), 1, *region.shape)
    return (family.apply(inside, elements) > 0.999) & inside.bool()


def measured_masks(family: TransformFamily, masks: Tensor, elements: Tensor, num_classes: int) -> Tensor:
    """Class masks (B, H, W) as the measured view moves them, on the family's frame: the family
    acts on their one-hot maps, and each pixel takes the class of largest weight (exact
    families move them exactly; a canvas's border is background, class 0).

    Examples:
        >>> from symtrain.transforms import Rot90
        >>> masks = torch.tensor([[[0, 1], [2, 0]]])
        >>> torch.equal(measured_masks(Rot90(), masks, torch.tensor([[1.0]]), 3), masks.rot90(1, (-2, -1)))
        True
    """
    one_hot = torch.nn.functional.one_hot(masks, num_classes).permute(0, 3, 1, 2).float()  # (B, K, H, W)
    return family.apply(family.canvas(one_hot), elements).argmax(dim=1)
