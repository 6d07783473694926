"""Segmentation: dense backbones whose logits move with the image, masks that move with their
images, equivariance metrics on known answers, and every dense backbone trained from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from backbone_configs import backbone_configs, build_tiny, tiny_args, without_backbone_flags
from PIL import Image
from test_cli import CONFIGS, only_run_dir, run_cli
from test_metrics import measure
from torch import Tensor, nn
from torchmetrics.classification import MulticlassJaccardIndex

from symtrain import load_model
from symtrain.backbones import AntialiasedCNN, Backbone, EquivariantCNN, StandardCNN
from symtrain.data import ImageFolder, Split, SyntheticShapes
from symtrain.data.synthetic import render_shapes
from symtrain.errors import SymtrainError
from symtrain.metrics import EquivarianceMetrics
from symtrain.metrics.base import Batch
from symtrain.metrics.functional import centred, measured_masks, visible_region
from symtrain.module import Normalize, SegmentationNet
from symtrain.symmetry import Augmentation
from symtrain.transforms import Affine, CircularShift, Elastic, Flip, Rot90, Rotation, Shift

SEGMENTATION = str(CONFIGS / "segmentation_quickstart.yaml")
TINY = [
    "--config",
    str(CONFIGS / "trainer" / "debug.yaml"),
    "--data.num_train=96",
    "--data.num_val=32",
    "--data.num_test=32",
    "--data.batch_size=32",
    "--model.backbone.width=4",
    "--metrics.num_samples=16",
    "--metrics.test_num_samples=16",
    "--metrics.angle_step=90",
    "--metrics.max_shift=2",
    "--run.wandb=false",
    "--run.quiet=true",
]


def relative(a: Tensor, b: Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def trained_briefly(net: nn.Module, size: int) -> nn.Module:
    """A few optimiser steps, so batch-norm statistics and weights are not the symmetric init."""
    optimiser = torch.optim.SGD(net.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        images = torch.rand(4, 1, size, size, generator=generator)
        targets = torch.randint(0, 3, (4, size, size), generator=generator)
        loss = nn.functional.cross_entropy(net(images), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return net.eval()


def dense(backbone: Backbone, size: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return trained_briefly(SegmentationNet(Normalize([0.5], [0.25]), backbone, num_classes=3), size)


@pytest.mark.parametrize("size", [32, 29])
@pytest.mark.parametrize("group,order", [("C", 4), ("D", 4), ("SO2", 4)])
def test_escnn_segmentation_logits_rotate_exactly_with_the_image(group: str, order: int, size: int) -> None:
    backbone = EquivariantCNN(
        1, group, order, width=8, depth=3, width_rule="params" if group == "SO2" else "channels"
    )
    net = dense(backbone, size)
    x = torch.rand(3, 1, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = net(x)  # (B, 3, H, W)
        for k in (1, 2, 3):
            moved = net(torch.rot90(x, k, dims=(-2, -1)))
            assert relative(moved, torch.rot90(logits, k, dims=(-2, -1))) < 1e-4
        flipped = relative(net(x.flip(-1)), logits.flip(-1))
    if group == "D":
        assert flipped < 1e-4
    else:
        assert flipped > 1e-2  # rotations only: a mirror image is another input
    assert logits.shape == (3, 3, size, size)
    # The plain-torch export (what predict and load_model(export=True) run) gives the same logits.
    exported = net.export()
    assert not [m for m in exported.modules() if type(m).__module__.startswith("escnn")]
    with torch.no_grad():
        assert relative(exported(x), logits) < 1e-5


def test_a_plain_cnn_segmentation_is_not_rotation_equivariant() -> None:
    net = dense(StandardCNN(1, width=8, depth=3))
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert relative(net(torch.rot90(x, 1, (-2, -1))), torch.rot90(net(x), 1, (-2, -1))) > 1e-2


def shift_errors(net: nn.Module, shifts: list[tuple[int, int]]) -> list[float]:
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = net(x)
        return [relative(net(torch.roll(x, s, (-2, -1))), torch.roll(logits, s, (-2, -1))) for s in shifts]


def test_aps_segmentation_follows_circular_shifts() -> None:
    net = dense(AntialiasedCNN(1, width=4, depth=3, downsample="aps"))
    assert net.backbone.total_stride == 8
    # Multiples of the total stride (what any fixed upsampling gives) and, because the decoder
    # puts samples back at the polyphase offsets the encoder kept, every other shift too.
    multiples = shift_errors(net, [(8, 0), (0, 16), (-8, 24)])
    others = shift_errors(net, [(1, 0), (3, 5), (-7, 2)])
    assert max(multiples + others) < 1e-5


@pytest.mark.parametrize("downsample", ["max", "blur"])
def test_max_and_blur_segmentation_only_approximately_follow_shifts(downsample: str) -> None:
    net = dense(AntialiasedCNN(1, width=4, depth=3, downsample=downsample))
    assert min(shift_errors(net, [(1, 0), (3, 5)])) > 1e-3


@pytest.mark.parametrize("config", backbone_configs(), ids=lambda p: p.stem)
def test_every_backbone_config_has_a_dense_form(config: Path) -> None:
    net = SegmentationNet(Normalize([0.5], [0.25]), build_tiny(config), num_classes=5).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 24, 24)).shape == (2, 5, 24, 24)
    assert sum(p.numel() for p in net.decoder.parameters()) > 0


def test_restricted_escnn_models_have_no_dense_form() -> None:
    backbone = EquivariantCNN(1, "D", 4, width=4, depth=2, restrict_from_stage=1)
    with pytest.raises(SymtrainError, match="restrict_from_stage has no dense form"):
        backbone.decoder(3)


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


# ---- data with masks -------------------------------------------------------------------------


def mask_folder(root: Path, bad_value: int | None = None, missing: bool = False) -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    for split in ("train", "test"):
        for label, name in enumerate(["circle", "square"]):
            for index in range(4):
                (images / split / name).mkdir(parents=True, exist_ok=True)
                (masks / split / name).mkdir(parents=True, exist_ok=True)
                pixels = torch.zeros(16, 16, dtype=torch.uint8)
                pixels[4 + index : 10 + index, 3:9] = label + 1 if bad_value is None else bad_value
                Image.fromarray(((pixels > 0) * 200).to(torch.uint8).numpy()).save(
                    images / split / name / f"{index}.png"
                )
                if not (missing and split == "test" and index == 3):
                    Image.fromarray(pixels.numpy()).save(masks / split / name / f"{index}.png")
    return images, masks


def test_image_folder_reads_masks_aligned_with_images(tmp_path: Path) -> None:
    images, masks = mask_folder(tmp_path)
    data = ImageFolder(str(images), masks_root=str(masks))
    data.setup()
    split = data.splits["test"]
    assert split.masks.shape == (8, 16, 16)
    assert torch.equal(split.masks > 0, split.images[:, 0] > 100)
    assert torch.equal(split.masks.flatten(1).amax(1), split.labels + 1)


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"missing": True}, "test/circle/3.png' of image"),
        ({"bad_value": 7}, "holds value 7 but there are 2 classes: use 0 for background and 1..2"),
    ],
)
def test_bad_masks_get_one_line(tmp_path: Path, kwargs: dict, expected: str, capsys) -> None:
    images, masks = mask_folder(tmp_path, **kwargs)
    args = ["fit", "--config", SEGMENTATION, *TINY, "--data", "ImageFolder", f"--data.root={images}"]
    code, _, err = run_cli(
        [*args, f"--data.masks_root={masks}", f"--trainer.default_root_dir={tmp_path / 'runs'}"], capsys
    )
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists() or not any(
        p.name != "wandb" for p in (tmp_path / "runs").iterdir()
    )


def test_segmentation_of_data_without_masks_is_refused(tmp_path: Path, capsys) -> None:
    images, _ = mask_folder(tmp_path)
    root = tmp_path / "runs"
    args = ["fit", "--config", SEGMENTATION, *TINY, "--data", "ImageFolder", f"--data.root={images}"]
    code, _, err = run_cli([*args, f"--trainer.default_root_dir={root}"], capsys)
    assert code == 2 and "ImageFolder has no masks to segment" in err and "masks_root" in err, err
    assert not root.exists() or not any(p.name != "wandb" for p in root.iterdir())


def test_segmentation_trains_on_an_image_folder_with_masks(tmp_path: Path, capsys) -> None:
    images, masks = mask_folder(tmp_path)
    root = tmp_path / "runs"
    args = ["fit", "--config", SEGMENTATION, *TINY, "--data", "ImageFolder", f"--data.root={images}"]
    code, _, err = run_cli(
        [*args, f"--data.masks_root={masks}", f"--trainer.default_root_dir={root}"], capsys
    )
    assert code == 0, err
    summary = json.loads((only_run_dir(root) / "summary.json").read_text())
    assert summary["task"] == "segmentation"
    assert {"val/miou", "test/miou", "test/equiv/rot90/miou"} <= set(summary["metrics"])


# ---- end to end from the CLI -----------------------------------------------------------------


@pytest.mark.parametrize("config", backbone_configs(), ids=lambda p: p.stem)
def test_every_dense_backbone_trains_from_the_cli(config: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    args = ["fit", "--config", SEGMENTATION, "--config", str(config), *without_backbone_flags(TINY)]
    args += tiny_args(config)
    code, _, err = run_cli([*args, f"--trainer.default_root_dir={root}"], capsys)
    assert code == 0, err
    run = only_run_dir(root)
    assert "-seg-" in run.name
    summary = json.loads((run / "summary.json").read_text())
    metrics = summary["metrics"]
    assert summary["task"] == "segmentation"
    for name in (
        "test/miou",
        "test/acc",
        "val/miou",
        "test/equiv/rot90/miou",
        "test/equiv/shift/consistency",
    ):
        assert 0.0 <= metrics[name] <= 1.0, name
    rot90 = metrics["test/equiv/rot90/equivariance_error"]
    if "escnn" in config.stem:
        assert rot90 < 1e-4  # exact by construction, after training too
    else:
        assert rot90 > 1e-3
    if config.stem == "antialiased_aps":
        assert metrics["test/equiv/circular_shift/equivariance_error"] < 1e-5
        assert metrics["test/equiv/circular_shift/consistency"] == pytest.approx(1.0)
    assert set(summary["curves"]["test/rotation"]) == {"angle", "miou"}


def test_segmentation_runs_reload_and_predict_per_pixel(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    code, _, err = run_cli(
        ["fit", "--config", SEGMENTATION, *TINY, f"--trainer.default_root_dir={root}"], capsys
    )
    assert code == 0, err
    run = only_run_dir(root)
    summary = json.loads((run / "summary.json").read_text())
    net = load_model(run)
    assert isinstance(net, SegmentationNet) and not net.training
    assert load_model(run, export=True) is not None  # nothing to export in a plain CNN: the same net
    # The comparison report reads segmentation runs in their own terms...
    code, _, err = run_cli(["report", str(run), "--out", str(tmp_path / "report")], capsys)
    assert code == 0, err
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Test mIoU (%)" in report and "Equivariance error of the per-pixel logits" in report
    assert "**mask consistency**" in report and "examples left out" in report
    assert (tmp_path / "report" / "figures" / "miou_vs_rotation.png").is_file()
    # ...and refuses to mix them with classification runs.
    classifier = tmp_path / "classifier"
    classifier.mkdir()
    (classifier / "summary.json").write_text(json.dumps({"backbone": "B", "strategy": "S", "metrics": {}}))
    code, _, err = run_cli(["report", str(run), str(classifier), "--out", str(tmp_path / "mixed")], capsys)
    assert code == 2 and "the runs mix tasks" in err and len(err.strip().splitlines()) == 1, err
    # The loaded network reproduces the logged test mIoU on the (tiny) test split.
    data = SyntheticShapes(num_train=96, num_val=32, num_test=32, batch_size=32)
    data.setup()
    test = data.splits["test"]
    with torch.no_grad():
        logits = net(test.images.float() / 255)
    assert logits.shape == (32, 9, 32, 32)
    miou = MulticlassJaccardIndex(9)(logits.argmax(1), test.masks).item()
    assert miou == pytest.approx(summary["metrics"]["test/miou"], abs=1e-5)
    code, _, err = run_cli(
        [
            "predict",
            "--config",
            str(run / "config.yaml"),
            "--ckpt_path",
            str(run / "checkpoints" / "best.ckpt"),
            f"--trainer.default_root_dir={root}",
        ],
        capsys,
    )
    assert code == 0, err
    predict_run = next(p for p in root.iterdir() if "-predict-" in p.name)
    predictions = torch.load(predict_run / "predictions.pt")
    assert (
        predictions["preds"].shape[1:] == (32, 32)
        and predictions["masks"].shape == predictions["preds"].shape
    )
