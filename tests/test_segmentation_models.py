"""Segmentation models: dense backbones whose logits move with the image, data with masks, and
every dense backbone trained from the CLI, reloaded and predicting per pixel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from backbone_configs import backbone_configs, build_tiny, tiny_args, without_backbone_flags
from PIL import Image
from segmentation_helpers import trained_briefly
from test_cli import CONFIGS, only_run_dir, run_cli
from torch import Tensor, nn
from torchmetrics.classification import MulticlassJaccardIndex

from symtrain import load_model
from symtrain.backbones import AntialiasedCNN, Backbone, EquivariantCNN, StandardCNN
from symtrain.data import ImageFolder, SyntheticShapes
from symtrain.errors import SymtrainError
from symtrain.module import Normalize, SegmentationNet

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
