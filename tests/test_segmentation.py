"""Segmentation measured: masks that move with their images (augmented and measured), and the
equivariance metrics of dense outputs on known answers (mASSC as its reference protocol). The
models, data with masks and training from the CLI: ``test_segmentation_models.py``."""

from __future__ import annotations

import pytest
import torch
from metrics_helpers import measure
from segmentation_helpers import trained_briefly
from torch import Tensor, nn

from symtrain.backbones import Backbone, StandardCNN
from symtrain.data import Split
from symtrain.data.synthetic import render_shapes
from symtrain.metrics import EquivarianceMetrics
from symtrain.metrics.base import Batch
from symtrain.metrics.functional import centred, measured_masks, visible_region
from symtrain.module import Normalize, SegmentationNet
from symtrain.symmetry import Augmentation
from symtrain.transforms import Affine, CircularShift, Elastic, Flip, Rot90, Rotation, Shift

# ---- masks move with their images ----------------------------------------------------------


def mask_images(count: int = 48, size: int = 32) -> tuple[Tensor, Tensor, Tensor]:
    """Shapes whose image encodes the mask: intensity k / 10 where the mask is k, 0.02 on the
    background. The mask is computable from the image, so any misalignment shows."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 8, (count,), generator=generator)
    centers = 16.0 + torch.randint(-5, 6, (count, 2), generator=generator).float()
    angles = torch.randint(0, 4, (count,), generator=generator).float() * 90
    _, masks = render_shapes(labels, angles, centers, torch.full((count,), 4.0), size)
    images = torch.where(masks > 0, masks.float() / 10, 0.02)[:, None]  # (N, 1, H, W)
    return images, masks, labels


def mask_from(images: Tensor) -> Tensor:
    return (images[:, 0] * 10).round().long()  # 0.02 -> 0, k / 10 -> k


@pytest.mark.parametrize("family", [Rot90(), Flip(), Shift(), Rotation(), Affine(), Elastic()], ids=repr)
def test_augmentation_moves_masks_with_their_images(family) -> None:
    images, masks, labels = mask_images()
    assert torch.equal(mask_from(images), masks)
    torch.manual_seed(0)
    moved_images, moved_masks = Augmentation([family]).augment(images, masks)
    assert moved_masks.shape == masks.shape and moved_masks.dtype == torch.int64
    # Nearest resampling: no new classes, and each image keeps its own one.
    assert ((moved_masks == 0) | (moved_masks == labels.view(-1, 1, 1) + 1)).all()
    assert (moved_masks > 0).flatten(1).any(1).float().mean() > 0.9  # the shapes did not vanish
    from_images = mask_from(moved_images)
    if family.exact or isinstance(family, Shift):  # pixel permutations (and zero fill): exact
        assert torch.equal(from_images, moved_masks)
    else:  # bilinear images against nearest masks differ only along the edges
        assert (from_images == moved_masks).float().mean() > 0.97
    changed = (moved_masks != masks).flatten(1).any(1).float().mean()
    assert changed > 0.3  # the augmentation did move most masks


@pytest.mark.parametrize(
    "family", [Rot90(), Flip(), CircularShift(), Shift(), Rotation(), Elastic()], ids=repr
)
def test_measured_masks_move_like_their_images(family) -> None:
    images, masks, _ = mask_images()
    elements = family.test_elements()[:1].expand(len(images), -1)
    moved = measured_masks(family, masks, elements, num_classes=9)
    seen = visible_region(family, elements, images)[:, 0]
    agree = (mask_from(family.apply(family.canvas(images), elements)) == moved)[seen].float().mean()
    # bilinear images against argmax-moved masks differ along edges, under rotations far from the identity
    assert agree == 1.0 if family.exact else agree > 0.95


# ---- metrics on known answers ----------------------------------------------------------------


class Pointwise(Backbone):
    """Per-pixel logits from the pixel alone (a fixed 1x1 map): equivariant to every family."""

    def __init__(self, pattern: Tensor | None = None) -> None:
        super().__init__()
        # Class k scores -(10 x - k)^2: the argmax recovers mask_images()'s classes exactly.
        self.register_buffer("classes", torch.arange(9.0).view(1, -1, 1, 1))
        self.pattern = pattern  # added to the logits: a fixed position-dependent map breaks equivariance

    def encode(self, images: Tensor) -> Tensor:
        return images

    def decoder(self, num_classes: int) -> nn.Module:
        backbone = self

        class Decode(nn.Module):
            def forward(self, x: Tensor) -> Tensor:
                k = backbone.classes
                logits = -((10 * x - k) ** 2)  # (B, 9, H, W)
                return logits if backbone.pattern is None else logits + backbone.pattern

        return Decode()


def dense_measure(backbone: Backbone, families: list, curves: bool = True) -> dict[str, float]:
    images, masks, labels = mask_images()
    split = Split((images * 255).round().to(torch.uint8), labels, masks)
    net = SegmentationNet(Normalize([0.0], [1.0]), backbone, num_classes=9).eval()
    measures = ["acc", "equivariance_error", "round_trip_error", "consistency"] + ["curve"] * curves
    callback = EquivarianceMetrics(families, measures, test_num_samples=48, angle_step=90, max_shift=2)
    return measure(net, split, callback, segmentation=True, num_outputs=9)


def test_an_equivariant_map_measures_zero_error_and_full_consistency() -> None:
    values = dense_measure(Pointwise(), [Rot90(), Flip(), CircularShift(), Shift(), Rotation()])
    for family in ("rot90", "flip", "circular_shift", "shift"):  # pixel permutations of an oracle
        assert values[f"test/equiv/{family}/equivariance_error"] < 1e-6, family
        assert values[f"test/equiv/{family}/consistency"] == pytest.approx(1.0), family
        assert values[f"test/equiv/{family}/miou"] == pytest.approx(1.0), family
        assert values[f"test/equiv/{family}/acc"] == pytest.approx(1.0), family
    assert values["test/equiv/shift/curve/2"] == pytest.approx(1.0)
    # Up to a per-pixel constant (which changes no probability, and the error ignores), the
    # logits -(10 x - k)^2 are 20 k x - k^2: linear in x, so they commute with bilinear
    # rotations too. A warp there and back still blurs the image, which the round trip shows;
    # the masks' edges under rotation cost mIoU.
    assert values["test/equiv/rotation/equivariance_error"] < 1e-10
    assert values["test/equiv/rotation/round_trip_error"] > 1e-4
    assert 0.5 < values["test/equiv/rotation/miou"] < 1.0
    assert not any("floor" in k for k in values)


def test_a_position_dependent_map_measures_its_analytic_error() -> None:
    pattern = torch.randn(1, 9, 32, 32, generator=torch.Generator().manual_seed(3))
    values = dense_measure(Pointwise(pattern), [Rot90()], curves=False)  # the pattern fits 32x32 only
    images, _, _ = mask_images()
    x = (images * 255).round() / 255
    a = centred((-((10 * x - torch.arange(9.0).view(1, -1, 1, 1)) ** 2) + pattern).double())  # (N, 9, H, W)
    # f(g x) - g f(x) = P - g P per pixel; the spread: two different images' logits at a pixel
    moved = torch.stack(
        [centred(pattern - pattern.rot90(k, (-2, -1))).pow(2).sum(1).mean() for k in (1, 2, 3)]
    )
    pairs = torch.stack([(a[i] - a).pow(2).sum(1).mean() * len(a) / (len(a) - 1) for i in range(len(a))])
    expected = moved.double().mean() / pairs.mean()
    assert values["test/equiv/rot90/equivariance_error"] == pytest.approx(expected.item(), rel=1e-4)
    assert values["test/equiv/rot90/consistency"] < 0.99


def reference_massc(net: nn.Module, images: Tensor, shifts: Tensor, max_shift: int, circular: bool) -> float:
    """learn_poly_sampling's mASSC, written out one image and one shift at a time: f(x) against
    f of the shifted image, the circular one rolled back and compared everywhere
    (``mASSC_circular``), the linear one cut from the image zero-padded by the largest shift
    (``BaseSegmentation._shifts``, which moves the content by −rolls) and compared on the crops
    both predictions share (``mASSC``); the mean over images and shifts. ``shifts`` (N, 2):
    how far symtrain's element moves the content, so rolls = −shift for the linear one."""
    scores = []
    with torch.no_grad():
        for image, (dy, dx) in zip(images, shifts.long().tolist(), strict=True):
            x = image[None]
            y_hat = net(x)
            if circular:
                y_roll = torch.roll(net(torch.roll(x, (dy, dx), dims=(-2, -1))), (-dy, -dx), dims=(-2, -1))
                scores.append((y_hat.argmax(1) == y_roll.argmax(1)).float().mean().item())
                continue
            rolls, m = (-dy, -dx), max_shift
            h, w = x.shape[-2:]
            padded = nn.functional.pad(x, (m, m, m, m))
            y_shift = net(padded[:, :, rolls[0] + m : rolls[0] + m + h, rolls[1] + m : rolls[1] + m + w])
            (y1_h0, y1_h1, y2_h0, y2_h1), (y1_w0, y1_w1, y2_w0, y2_w1) = (
                (o, n, 0, n - o) if o >= 0 else (0, n + o, -o, n) for o, n in zip(rolls, (h, w), strict=True)
            )
            y1 = y_hat[:, :, y1_h0:y1_h1, y1_w0:y1_w1].argmax(1)
            y2 = y_shift[:, :, y2_h0:y2_h1, y2_w0:y2_w1].argmax(1)
            scores.append((y1 == y2).float().mean().item())
    return sum(scores) / len(scores)


def massc_values(
    net: nn.Module, families: list, draws: int = 2, noise: bool = False
) -> tuple[dict[str, float], Tensor]:
    """mASSC of ``net`` through the callback on 24 mask images (or, with ``noise``, uniform
    noise, whose content reaches the border), and the images it measured."""
    images, masks, labels = mask_images(24)
    if noise:
        images = torch.rand(images.shape, generator=torch.Generator().manual_seed(4))
    split = Split((images * 255).round().to(torch.uint8), labels, masks)
    callback = EquivarianceMetrics(families, ["massc"], test_num_samples=24, draws=draws)
    values = measure(net, split, callback, segmentation=True, num_outputs=9)
    return values, callback._subsets[("test", id(split))].images.float() / 255


@pytest.mark.parametrize("family", [Shift(5), CircularShift(5)], ids=repr)
def test_massc_is_the_reference_protocol(family) -> None:
    """mASSC against learn_poly_sampling's code on a briefly trained U-Net: one shift of the
    image against the image itself, on its own frame, over the pixels that stay (all of them
    for a roll). symtrain's mASSC before (two shifts on a canvas padded by m, its zero border
    counted) gives another value."""
    from symtrain.metrics.massc import reference_shifts  # the reference's range

    torch.manual_seed(0)
    net = SegmentationNet(Normalize([0.1], [0.2]), StandardCNN(1, width=4, depth=2), num_classes=9)
    net = trained_briefly(net, 32)
    values, images = massc_values(net, [family], draws=2)
    count = len(images)
    batch = Batch(net, images, torch.zeros(count), True, 9, torch.arange(count), count, 0)
    circular = isinstance(family, CircularShift)
    expected = [
        reference_massc(net, images, reference_shifts(batch, family, d), 5, circular) for d in range(2)
    ]
    assert values[f"test/equiv/{family.name}/massc"] == pytest.approx(sum(expected) / 2, abs=1e-6)
    assert values[f"test/equiv/{family.name}/massc"] < 0.99  # this U-Net does not follow every shift


def test_massc_known_answers() -> None:
    """A per-pixel map follows every shift: 100%. A network of circular convolutions follows
    every roll exactly (100% under circular_shift), not a zero-fill shift of its frame, where
    the content it would wrap around is gone: below 100% (on a canvas padded by m, which no
    shift leaves, every shift is a roll, and the old protocol gave it 100%)."""
    pointwise = SegmentationNet(Normalize([0.0], [1.0]), Pointwise(), 9).eval()
    values, _ = massc_values(pointwise, [Shift(5), CircularShift(5)])
    assert values["test/equiv/shift/massc"] == 1.0 and values["test/equiv/circular_shift/massc"] == 1.0
    torch.manual_seed(0)
    wrapping = nn.Sequential(
        nn.Conv2d(1, 8, 5, padding=2, padding_mode="circular"),
        nn.Tanh(),
        nn.Conv2d(8, 9, 5, padding=2, padding_mode="circular"),
    ).eval()
    values, _ = massc_values(wrapping, [Shift(5), CircularShift(5)], noise=True)
    assert values["test/equiv/circular_shift/massc"] == 1.0
    assert values["test/equiv/shift/massc"] < 0.95


def test_massc_shifts_cover_the_reference_range() -> None:
    """Integers uniform in [-m, m]² with both ends (numpy's randint(-m, m + 1)), multiples of
    the stride for a strided circular family; each image's own, whatever the batching."""
    from symtrain.metrics.massc import reference_shifts

    count, images = 4000, torch.zeros(4000, 1, 2, 2)
    batch = Batch(nn.Identity(), images, torch.zeros(count), True, 2, torch.arange(count), count, 3)
    shifts = reference_shifts(batch, Shift(3), 0)
    assert sorted(set(shifts.flatten().tolist())) == [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
    assert shifts.flatten().long().add(3).bincount().min() > count * 2 / 7 * 0.8
    strided = reference_shifts(batch, CircularShift(8, stride=4), 1)
    assert sorted(set(strided.flatten().tolist())) == [-8.0, -4.0, 0.0, 4.0, 8.0]
    half = Batch(nn.Identity(), images[:10], torch.zeros(10), True, 2, torch.arange(100, 110), count, 3)
    assert torch.equal(reference_shifts(half, Shift(3), 0), shifts[100:110])
