"""Symmetry for any network through a learned canonical pose (Kaba et al. 2023).

Written here rather than taken from ``equiadapt``: equiadapt's discrete image
canonicalization rotates with an interpolating warp (kornia's ``rotate``) even by quarter
turns and builds its own canonicalization networks, whereas here quarter turns and flips are
exact permutations of the pixels (so the invariance is exact, at odd sizes too) and the
canonicalizer is this project's escnn backbone, whose filter cache, export and checkpoints
behave as every backbone's do.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from kornia.filters.kernels import get_pascal_kernel_2d
from torch import Tensor, nn

from symtrain.backbones.base import Backbone
from symtrain.backbones.equivariant.ops import symmetric_blur_pool
from symtrain.errors import SymtrainError
from symtrain.symmetry.base import StrategyNet, SymmetryStrategy
from symtrain.transforms import Flip, Rot90, Rotation, Symmetries, disk_mask


class Canonicalizer(nn.Module):
    """A small escnn C_N or D_N network (this project's :class:`EquivariantCNN`, without its
    invariant pooling) that gives one score per group element, (B, |G|): its last regular
    fields, averaged over the image and combined with one learned weight per field. Turning the
    image by g permutes the scores as g permutes the group (the regular representation), so
    the best-scoring element moves with the image.

    Args:
        in_channels: image channels.
        group: ``C`` or ``D``.
        order: N.
        width: as for `EquivariantCNN`.
        depth: as for `EquivariantCNN` (one convolution per stage).
        kernel_size: as for `EquivariantCNN`.
        downsample: anti-aliased halvings of the image before the network reads it, on a grid
            symmetric under quarter turns and mirrors at odd sizes too (a pose needs no detail).
    """

    def __init__(
        self,
        in_channels: int,
        group: str,
        order: int,
        width: int,
        depth: int,
        kernel_size: int,
        downsample: int = 1,
    ) -> None:
        super().__init__()
        from symtrain.backbones.equivariant import EquivariantCNN

        self.downsample = downsample
        # A fixed filter, not learned: kept out of checkpoints.
        self.register_buffer("blur", get_pascal_kernel_2d(3, norm=True), persistent=False)

        self.network = EquivariantCNN(
            in_channels,
            group=group,
            order=order,
            width=width,
            depth=depth,
            convs_per_stage=1,
            kernel_size=kernel_size,
            disk_mask=4 % order != 0,  # rotations off the grid lose the corners: look at the disk only
        )
        self.group_size = order * (2 if group == "D" else 1)
        fields = self.network.out_channels  # regular fields before the invariant pooling
        self.field_weights = nn.Parameter(torch.randn(fields) / math.sqrt(fields))

    def forward(self, images: Tensor) -> Tensor:
        """(B, |G|) scores: the sums over the fields of :meth:`terms`."""
        return self.terms(images).sum(dim=1)

    def terms(self, images: Tensor) -> Tensor:
        """(B, F, |G|): each field averaged over the image, times its weight, in float64
        (float32 on MPS, which has none); the scores are their sums over the fields.

        The network runs outside autocast, in its parameters' dtype: the scores decide a
        discrete pose, and bf16's rounding (about 1e-2) would reorder close scores, each turn of
        an image its own way. The network is small, so this costs little.
        """
        with torch.autocast(images.device.type, enabled=False):
            images = images.to(self.field_weights.dtype)
            for _ in range(self.downsample):
                images = symmetric_blur_pool(images, self.blur)
            fields = self.network.encode(images).bottom  # (B, F * |G|, h, w), one field after another
            total = torch.float32 if images.device.type == "mps" else torch.float64
            pooled = fields.to(total).mean(dim=(-2, -1)).view(len(images), -1, self.group_size)
            return pooled * self.field_weights.to(total)[:, None]

    def export(self) -> Canonicalizer:
        """The same canonicalizer with its escnn network as plain torch modules (eval mode)."""
        clone = Canonicalizer.__new__(Canonicalizer)
        nn.Module.__init__(clone)
        clone.network = self.network.export_encoder()
        clone.downsample = self.downsample
        clone.register_buffer("blur", self.blur, persistent=False)
        clone.group_size = self.group_size
        clone.field_weights = self.field_weights
        return clone.eval()


class Canonicalization(SymmetryStrategy):
    """Any network made invariant (classification) or equivariant (segmentation) by reading
    every input in a canonical pose chosen by a small equivariant network (Kaba et al. 2023,
    "Equivariance with Learned Canonicalization Functions"; Mondal et al. 2023 for the prior).

    The canonicalizer scores every element of C_N or D_N; the input x is turned by the inverse
    of the best-scoring element h(x), and the network reads h(x)⁻¹·x. Since h(g·x) = g·h(x),
    h(g·x)⁻¹·g·x = h(x)⁻¹·x: the same image whatever the pose. Segmentation logits are turned
    back by h(x). Quarter turns and flips are exact permutations of the pixels; other angles
    (N = 8, 16, ...) rotate by interpolation inside the inscribed disk, so they are approximate
    and measured as such.

    The scores of g·x are those of x permuted only up to rounding, so the argmax is guarded: the
    canonicalizer runs outside autocast and sums its scores in float64, and in evaluation the
    near-ties are decided on scores that are the same bits for every pose of the input
    (:meth:`CanonicalizedNet._choose`). For C4 and D4 the logits are then bitwise the same for
    every quarter turn and mirror of the input, in float32 and under bf16 autocast.

    Training goes through the argmax with a straight-through gradient (as equiadapt does): the
    forward pass uses the chosen element exactly, the backward pass the softmax of
    ``beta`` x scores. The prior (Mondal et al. 2023) adds ``prior_weight`` x the cross-entropy
    between the scores and the identity to the training loss, pulling upright training images
    to the identity, so a pretrained network keeps seeing the poses it knows; logged as
    ``train/canonical/prior_loss`` with the share of inputs mapped to each element
    (``{stage}/canonical/identity_share``, ``{stage}/canonical/share/{element}``, and a wandb
    histogram).

    Args:
        group: ``C`` (rotations) or ``D`` (rotations and mirrors).
        order: N, the number of rotations.
        width: first-stage width of the canonicalizer (StandardCNN-equivalent channels).
        depth: stages of the canonicalizer (each halves the resolution).
        kernel_size: odd kernel size of its convolutions.
        downsample: anti-aliased halvings of the image before the canonicalizer reads it.
        prior_weight: weight of the prior toward the identity; 0 turns it off.
        beta: inverse temperature of the straight-through softmax.

    Examples:
        >>> from symtrain.module import Normalize, SymmetryNet
        >>> from symtrain.backbones import StandardCNN
        >>> inner = SymmetryNet(Normalize([0.5], [0.5]), StandardCNN(1, 4, 1), 3)
        >>> net = Canonicalization(width=4, depth=1).wrap(inner).eval()
        >>> x = torch.rand(2, 1, 9, 9)
        >>> torch.equal(net(x), net(torch.rot90(x, 1, dims=(-2, -1))))
        True
    """

    examples = (
        {"group": "C", "order": 4, "width": 4, "depth": 1},
        {"group": "D", "order": 4, "width": 4, "depth": 1, "prior_weight": 0.0},
    )

    def __init__(
        self,
        group: Literal["C", "D"] = "C",
        order: int = 4,
        width: int = 8,
        depth: int = 2,
        kernel_size: int = 3,
        downsample: int = 1,
        prior_weight: float = 0.1,
        beta: float = 1.0,
    ) -> None:
        if group not in ("C", "D") or order < 1:
            raise SymtrainError(
                f"Canonicalization group={group!r} order={order}: choose C or D with order N >= 1"
            )
        if depth < 1 or kernel_size % 2 == 0 or downsample < 0:
            raise SymtrainError(
                f"Canonicalization depth={depth}, kernel_size={kernel_size}: "
                f"downsample={downsample}: the canonicalizer needs depth >= 1, an odd kernel_size "
                "and downsample >= 0"
            )
        rotations = [Rot90()] if 4 % order == 0 else [Rotation()]
        super().__init__([*rotations, Flip()] if group == "D" else rotations)
        self.group, self.order, self.width, self.depth = group, order, width, depth
        self.kernel_size, self.prior_weight, self.beta = kernel_size, prior_weight, beta
        self.downsample = downsample

    @property
    def smallest_size(self) -> int:
        """The smallest image side the canonicalizer reads: each halving and stage halves it."""
        return 2 ** (self.depth + self.downsample)

    def check(self, backbone: Backbone, image_size: int | None = None, dense: bool = False) -> None:
        if image_size is not None and image_size < self.smallest_size:
            raise SymtrainError(
                f"the canonicalizer's {self.depth} stages need images of at least {self.smallest_size} "
                f"pixels (got {image_size}): lower model.symmetry.init_args.depth or downsample"
            )

    def guarantees(self) -> Symmetries:
        exactness = "exact" if self.order % 4 == 0 and 4 % self.order == 0 else "approximate"
        claims: Symmetries = {Rot90(): exactness} if self.order % 4 == 0 else {}
        if self.group == "D":
            claims.update({Flip("horizontal"): exactness, Flip("vertical"): exactness})
        return claims

    def wrap(self, net: nn.Module) -> nn.Module:
        in_channels = int(net.normalize.mean.shape[1])
        canonicalizer = Canonicalizer(
            in_channels, self.group, self.order, self.width, self.depth, self.kernel_size, self.downsample
        )
        return CanonicalizedNet(net, canonicalizer, self)

    def extra_repr(self) -> str:
        group = f"{self.group}{self.order}"
        return f"group={group}, width={self.width}, depth={self.depth}, prior_weight={self.prior_weight}"


class CanonicalizedNet(StrategyNet):
    """``inner`` reading its inputs in the pose a :class:`Canonicalizer` picks (see
    :class:`Canonicalization`)."""

    def __init__(self, inner: nn.Module, canonicalizer: Canonicalizer, strategy: Canonicalization) -> None:
        super().__init__(inner)
        self.canonicalizer = canonicalizer
        self.__dict__["strategy"] = strategy  # holds no weights: not saved twice
        # Score index i is escnn's group element i, (flip, rotation) for D_N: rotate by
        # 360 r / N degrees after mirroring (escnn's (1, 0) is x.flip(-1), its rotation by +90
        # degrees torch.rot90(x, 1, (-2, -1)); the identity is element 0).
        order = strategy.order
        self.poses = [(flip, r) for flip in ((0, 1) if strategy.group == "D" else (0,)) for r in range(order)]
        self.element_labels = tuple(
            f"{'flip-' if flip else ''}r{round(360 * r / order)}" for flip, r in self.poses
        )
        self._last: dict[str, Tensor] = {}

    #: Best scores closer than this, relative to the summed size of their terms, are
    #: near-ties, decided on bitwise-equal scores (:meth:`_choose`). Rounding moves scores by
    #: at most 1.5e-6 of that size (measured on trained and untrained C4 and D4 canonicalizers,
    #: noise, shapes and near-constant images), 30 times below half of it; 0.1-0.2% of the
    #: shapes are near-ties, each costing a canonicalizer pass over its |G| poses.
    tie_tolerance = 1e-4

    def _rotate(self, images: Tensor, r: int) -> Tensor:
        """Rotate by 360 r / N degrees counter-clockwise: exact for quarter turns."""
        angle = 360.0 * r / self.strategy.order
        if angle % 90 == 0:
            return torch.rot90(images, int(angle // 90) % 4, dims=(-2, -1))
        return Rotation().apply(disk_mask(images), torch.full((len(images), 1), angle, device=images.device))

    def act(self, images: Tensor, pose: tuple[int, int]) -> Tensor:
        flip, r = pose
        return self._rotate(images.flip(-1) if flip else images, r)

    def act_inverse(self, images: Tensor, pose: tuple[int, int]) -> Tensor:
        flip, r = pose
        turned = self._rotate(images, -r)
        return turned.flip(-1) if flip else turned

    def forward(self, images: Tensor) -> Tensor:
        exact = 4 % self.strategy.order == 0  # every pose a permutation of the pixels
        if not exact:  # interpolated rotations: every pose is read on the disk
            images = disk_mask(images)
        terms = self.canonicalizer.terms(images)  # (B, F, |G|)
        scores = terms.sum(dim=1)
        if exact and not self.canonicalizer.training:
            chosen = self._choose(images, terms.detach())
        else:  # batch statistics make a training pose depend on the batch: no exact claim there
            chosen = scores.argmax(dim=1)
        soft = (self.strategy.beta * scores).softmax(dim=1)
        # Straight-through: exactly one-hot forward, softmax backward. The brackets matter:
        # (1 + soft) - soft rounds to 1 +- 1 ulp, and by how much depends on the scores, which
        # differ in their last bits between turns of an image.
        weights = F.one_hot(chosen, len(self.poses)).to(soft.dtype) + (soft - soft.detach())
        canonical = sum(
            weights[:, i, None, None, None].to(images.dtype) * self.act_inverse(images, pose)
            for i, pose in enumerate(self.poses)
        )
        outputs = self.inner(canonical)
        if outputs.dim() == 4:  # per-pixel logits: back to the input's pose
            outputs = sum(
                weights[:, i, None, None, None].to(outputs.dtype) * self.act(outputs, pose)
                for i, pose in enumerate(self.poses)
            )
        self._last = {"scores": scores, "chosen": chosen}
        return outputs

    @torch.no_grad()
    def _choose(self, images: Tensor, terms: Tensor) -> Tensor:
        """The best-scoring pose of each input, exactly ``g`` composed with the pose of the
        input turned by ``g`` (or a pose giving the same canonical image).

        The scores of a turned image are the scores permuted only up to rounding: escnn's
        expanded filters are equivariant only to float32 precision and a turned image is summed
        in another order. Where the best two scores are further apart than
        :attr:`tie_tolerance` times the size of the terms they sum, rounding cannot swap them
        and the argmax is taken. Closer inputs (near-ties, and every input with a symmetry)
        are decided by :meth:`_choose_exactly`, on scores that are bitwise the same for every
        turn of the input. Both ways give the same pose wherever the rounding stays below half
        the tolerance, so an input's pose does not depend on which way its turn took.
        """
        scores = terms.sum(dim=1)
        chosen = scores.argmax(dim=1)
        if scores.shape[1] < 2:
            return chosen
        best, second = scores.topk(2, dim=1).values.unbind(dim=1)
        size = terms.abs().sum(dim=1).amax(dim=1)
        near = (best - second <= self.tie_tolerance * size).nonzero().flatten().tolist()  # reads the device
        if near:
            decided = [self._choose_exactly(images[index]) for index in near]
            chosen[near] = torch.tensor(decided, device=chosen.device)
        return chosen

    def _choose_exactly(self, image: Tensor) -> int:
        """The pose of one image (C, H, W) from the same batch of floats for every turn of it.

        The candidates h⁻¹·x are the same set of images, exactly, for every turn of x (rot90 and
        flips only move pixels); sorted by their bits, they make the same batch, whose scores
        are then the same bits too (a batch of another size or order may not be: convolutions
        pick their kernels by shape). Each candidate's score for the identity is the score of h.
        The first of equal best scores wins: the smallest candidate, again the same image.
        """
        candidates = torch.stack([self.act_inverse(image[None], pose)[0] for pose in self.poses])
        order = bitwise_order(candidates.flatten(1))
        scores = self.canonicalizer(candidates[order])[:, 0]
        return int(order[scores.argmax()])

    def penalty(self) -> Tensor | None:
        if not self.training or self.strategy.prior_weight == 0 or "scores" not in self._last:
            return None
        scores = self._last["scores"]
        identity = torch.zeros(len(scores), dtype=torch.long, device=scores.device)
        # float32 as the task loss it is added to: its precision does not decide anything
        return (self.strategy.prior_weight * F.cross_entropy(scores, identity)).float()

    def choices(self) -> Tensor | None:
        return self._last.get("chosen")

    def export(self) -> StrategyNet:
        clone = super().export()
        clone.canonicalizer = self.canonicalizer.export()
        clone._last = {}
        return clone

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_last"] = {}  # the last batch's scores are no state of the model
        return state


def bitwise_order(rows: Tensor) -> Tensor:
    """The indices that sort the rows of ``rows`` (n, d) by their bits read as integers, the
    first column first; rows with the same bits keep their order. Not the numeric order, but a
    total order on the exact values (zeros of either sign and NaNs included) that needs no
    sort key: the rows are few.

    Examples:
        >>> bitwise_order(torch.tensor([[1.0, 2.0], [1.0, 0.5], [0.5, 9.0]])).tolist()
        [2, 1, 0]
    """
    integers = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[rows.element_size()]
    bits = rows.contiguous().view(integers)
    differ = bits[:, None] != bits[None]  # (n, n, d)
    first = differ.to(torch.uint8).argmax(dim=-1)  # the first column where rows i and j differ
    # smaller[i, j]: row i sorts before row j (False for equal rows: their first column is 0)
    smaller = bits.gather(1, first) < bits.gather(1, first.T).T
    return smaller.sum(dim=0).argsort(stable=True)  # by how many rows sort before each
