"""User mistakes end in one readable line, exit code 2, no traceback and no run left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_contracts import shipped

from symtrain.backbones import Backbone
from symtrain.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
TINY = [
    "--config",
    str(ROOT / "configs" / "trainer" / "debug.yaml"),
    "--data.num_train=64",
    "--data.num_val=32",
    "--data.num_test=32",
    "--model.backbone.width=4",
    "--run.wandb=false",
    "--run.quiet=true",
]

# Every backbone that ships (discovered as the contract tests discover plugins, not listed).
BACKBONE_CHOICES = ", ".join(cls.__name__ for cls in shipped(Backbone))

# (extra arguments, text the single line of error must contain)
MISTAKES = [
    (
        ["--model.backbone", "Resnet"],
        f"model.backbone: unknown class 'Resnet' (valid choices: {BACKBONE_CHOICES})",
    ),
    (["--model.symmetry", "Augmentatoin"], "unknown class 'Augmentatoin' (valid choices: Architectural"),
    (["--data", "Imagenet"], "data: unknown class 'Imagenet' (valid choices: CIFAR10, ImageFolder"),
    (["--model.symmetry", "Augmentation", "--model.symmetry.families", "[Rot91]"], "valid choices: Affine"),
    (["--model.lr", "fast"], "model.lr: expected float, got 'fast'"),
    (["--trainer.max_epochs", "ten"], "trainer.max_epochs: expected int, got 'ten'"),
    (["--model.backbone.widht", "8"], "no option 'widht' (options: width, depth"),
    (["--data.train_orientation", "sideways"], "data.train_orientation: expected one of"),
    (["--data.classes", "[L, Q]"], "unknown shape class 'Q'"),
    (
        ["--model.symmetry", "Architectural", "--model.symmetry.families", "[Rot90]"],
        "does not declare exact rot90",
    ),
    (
        ["--model.symmetry", "Augmentation", "--model.symmetry.families", "[CircularShift]"],
        "augment with Shift",
    ),
    (["--data", "MNIST", "--data.root", "{tmp}/nothing"], "--data.download true"),
    (["--data", "ImageFolder", "--data.root", "{tmp}/nothing"], "is not a directory"),
    (["--trainer.default_root_dir", "{tmp}/a-file/runs"], "cannot write run directory"),
    (["--no_such_flag", "1"], "unrecognized arguments: --no_such_flag"),
    (
        ["--model.backbone", "EquivariantCNN", "--model.backbone.order", "0"],
        "model.backbone.order=0: a C_N or D_N group needs N >= 1",
    ),
    (
        ["--model.backbone", "AntialiasedCNN", "--model.backbone.downsample", "aps"]
        + ["--model.symmetry", "Architectural", "--model.symmetry.families", "[CircularShift]"]
        + ["--data.image_size", "30"],
        "multiple of its total stride 8, not 30: resize the data (e.g. --data.image_size 24)",
    ),
    (
        ["--model.backbone", "AntialiasedCNN", "--model.backbone.filter_size", "7"]
        + ["--model.backbone.depth", "3", "--data.image_size", "8"],
        "AntialiasedCNN-blur cannot run on 8x8 images (a layer's map is smaller than its padding or "
        "kernel, or two maps added differ in size): pass e.g. --data.image_size 16",
    ),
    (
        ["--config", str(ROOT / "configs" / "task" / "segmentation.yaml"), "--model.backbone", "ResNet"]
        + ["--model.backbone.depth", "18", "--model.backbone.downsample", "aps"]
        + ["--model.symmetry", "Architectural"]
        + ["--model.symmetry.families", "[CircularShift]"],
        "ResNet does not declare exact circular_shift equivariance of its dense form",
    ),
    (["--ckpt_path", "{tmp}/missing.ckpt"], "missing.ckpt' does not exist: pass a .ckpt file or a run"),
    (["--ckpt_path", "{tmp}/a-file"], "cannot read checkpoint"),
]


@pytest.mark.parametrize("extra,expected", MISTAKES, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_mistakes_get_one_line_and_leave_nothing(
    extra: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    runs = tmp_path / "runs"
    extra = [arg.replace("{tmp}", str(tmp_path)) for arg in extra]
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", QUICKSTART, *TINY, f"--trainer.default_root_dir={runs}", *extra])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not runs.exists() or not any(runs.iterdir())


def test_a_bad_image_found_while_training_starts_removes_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The folder is only read in setup, after the run directory exists: it must go again."""
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                Image.fromarray((torch.rand(8, 8) * 255).byte().numpy(), mode="L").save(folder / f"{i}.png")
    Image.fromarray((torch.rand(9, 9) * 255).byte().numpy(), mode="L").save(
        tmp_path / "images/test/b/odd.png"
    )
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exited:
        main(
            ["fit", "--config", QUICKSTART, *TINY[:2], "--run.wandb=false", "--model.backbone.width=4"]
            + [
                "--data",
                "ImageFolder",
                f"--data.root={tmp_path / 'images'}",
                "--data.image_size=null",  # as they are (the quickstart's shapes are 32)
                f"--trainer.default_root_dir={runs}",
            ]
        )
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert "odd.png" in err and len(err.strip().splitlines()) == 1
    assert not any(runs.iterdir())


def test_the_real_command_prints_exactly_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "symtrain", "fit", "--config", QUICKSTART, "--model.backbone", "Resnet"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "symtrain: error: model.backbone: unknown class 'Resnet' "
        f"(valid choices: {BACKBONE_CHOICES}) (see --help)"
    ]
    assert done.stdout == "" and not (tmp_path / "runs").exists()
