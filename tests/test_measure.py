"""Measuring any model: ``symtrain.measure()`` and ``python -m symtrain measure`` give a run's own
numbers for a symtrain run, and ``report`` puts the measured run beside the trained one;
``symtrain.measure()`` on any module runs what each measure can, with known answers.
Models from elsewhere (timm, torchvision, files, a zoo sweep) and bad input:
``test_measure_zoo.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from measure_helpers import CONFIGS, SHAPES, TINY_SHAPES
from test_cli import run_cli as run
from torch import nn

import symtrain
from symtrain import load_model
from symtrain.__main__ import main
from symtrain.data import SyntheticShapes
from symtrain.errors import SymtrainError
from symtrain.metrics.base import Settings, measures_for
from symtrain.transforms import CircularShift, Rot90, Rotation, Shift

TINY_METRICS = ["--metrics.test_num_samples=48"]
# Measured keys: everything the callback logs at test (the upright score comes from the test step).
MEASURED = ("test/equiv/", "test/lie/", "test/diffeo/")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny quickstart run on the shapes: 200 test images in batches of 32 (a short last batch)."""
    root = tmp_path_factory.mktemp("trained")
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "quickstart.yaml"),
            *TINY_SHAPES,
            *TINY_METRICS,
            "--model.backbone.width=4",
            "--trainer.max_epochs=2",
            f"--trainer.default_root_dir={root}",
            "--run.name=cnn",
            "--run.wandb=false",
            "--run.quiet=true",
        ]
    )
    return root / "cnn"


def measured_part(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(MEASURED)}


def shapes_of(run_dir: Path) -> SyntheticShapes:
    data = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["init_args"]
    return SyntheticShapes(**data)


@pytest.mark.slow
def test_measure_gives_the_runs_own_test_numbers_to_the_last_digit(trained: Path) -> None:
    """``symtrain.measure()`` on a reloaded model and its data: the callback's values exactly."""
    summary = json.loads((trained / "summary.json").read_text())
    values = symtrain.measure(load_model(trained), shapes_of(trained), num_samples=48)
    expected = measured_part(summary["metrics"])
    assert len(expected) > 30
    assert {k: v for k, v in values.items() if k in expected} == expected
    assert not set(expected) - set(values)
    # The same images as a DataLoader, in other batches: the same values.
    subset = shapes_of(trained)
    subset.setup("test")
    chosen = subset.splits["test"].sample(48, 0)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(chosen.images, chosen.labels), batch_size=20
    )
    again = symtrain.measure(load_model(trained), loader, measures=["invariance_error", "consistency", "acc"])
    assert again == {
        k: v for k, v in values.items() if k.rsplit("/", 1)[1] in ("invariance_error", "consistency", "acc")
    }


@pytest.mark.slow
def test_the_command_measures_a_run_as_its_test_did_and_report_puts_them_in_one_table(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        [
            "measure",
            "--model=SymtrainRun",
            f"--model.path={trained}",
            *SHAPES,
            *TINY_SHAPES,
            *TINY_METRICS,
            f"--root={tmp_path}",
            "--run.name=again",
        ],
        capsys,
    )
    assert code == 0, err
    mine = json.loads((trained / "summary.json").read_text())
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert set(mine) <= set(again) and again["measured"]["source"] == "symtrain"
    assert measured_part(again["metrics"]) == measured_part(mine["metrics"])
    assert again["metrics"]["test/acc"] == mine["metrics"]["test/acc"]
    assert again["metrics"]["test/loss"] == pytest.approx(mine["metrics"]["test/loss"], rel=1e-6)
    assert again["curves"] == mine["curves"] and again["families"] == mine["families"]
    assert (tmp_path / "again" / "config.yaml").is_file() and (tmp_path / "again" / "metrics.csv").is_file()
    assert list((tmp_path / "wandb").glob("offline-run-*")), "a wandb run, offline, in the same project"
    assert "measured " in out and "rot90:" in out
    # One table: the trained run and the measured one.
    code, out, err = run(
        ["report", str(trained), str(tmp_path / "again"), "--out", str(tmp_path / "report")], capsys
    )
    assert code == 0, err
    table = (tmp_path / "report" / "report.md").read_text()
    # Its row is the measured run's own (named by the run it measured), not a second seed of it.
    assert "| StandardCNN + NoSymmetry | 1 |" in table and "| cnn | 1 |" in table


@pytest.mark.slow
def test_the_test_loss_is_the_mean_over_images_not_over_batches(trained: Path) -> None:
    """200 test images in batches of 32: a short last batch weighs as its 8 images."""
    net, data = load_model(trained), shapes_of(trained)
    data.setup("test")
    split = data.splits["test"]
    with torch.no_grad():
        losses = F.cross_entropy(net(split.images.float() / 255), split.labels, reduction="none")
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["metrics"]["test/loss"] == pytest.approx(losses.mean().item(), rel=1e-6)


def test_what_each_measure_needs_decides_what_runs_without_labels_or_stages(images: torch.Tensor) -> None:
    needs = {cls.key: cls.needs for cls in measures_for("classification", [k for k in _all_keys()])}
    assert needs["acc"] == {"labels"} and needs["curve"] == {"labels"}
    assert needs["layer"] == {"stages"} and needs["lie_layers"] == {"stages"}
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    values = symtrain.measure(net, images, [Rot90()])  # no labels, no stages: the rest
    assert "test/equiv/rot90/invariance_error" in values and not any("/acc" in k for k in values)
    with pytest.raises(SymtrainError, match="measure 'acc' needs labels"):
        symtrain.measure(net, images, [Rot90()], ["acc"])
    scored = symtrain.measure(net, (images, torch.zeros(6, dtype=torch.long)), [Rot90()], ["acc"])
    assert 0 <= scored["test/equiv/rot90/acc"] <= 1


def _all_keys() -> list[str]:
    return sorted({cls.key for cls in measures_for("classification", None)} | {"lie_layers"})


def test_known_answers_and_batch_independence(images: torch.Tensor) -> None:
    """A function invariant by construction measures 0, and the batch size changes nothing."""
    pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 4))
    families = [Rot90(), CircularShift(max_pixels=4), Shift(max_pixels=2), Rotation()]
    values = symtrain.measure(pooled, images, families[:2], ["invariance_error", "consistency"])
    assert values["test/equiv/rot90/invariance_error"] < 1e-6
    assert values["test/equiv/circular_shift/invariance_error"] < 1e-6
    assert values["test/equiv/rot90/consistency"] == 1.0
    net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    settings = Settings(draws=2, angle_step=0, max_shift=0)
    one = symtrain.measure(
        net, images, families, ["invariance_error", "consistency", "lie"], settings=settings, batch_size=1
    )
    six = symtrain.measure(
        net, images, families, ["invariance_error", "consistency", "lie"], settings=settings
    )
    assert one.keys() == six.keys() and all(one[k] == pytest.approx(six[k], rel=1e-5, abs=1e-7) for k in one)


def test_bf16_runs_and_stays_near_float32(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    exact = symtrain.measure(net, images, [Rot90(), Shift(2)], ["invariance_error"])
    rounded = symtrain.measure(net, images, [Rot90(), Shift(2)], ["invariance_error"], precision="bf16")
    assert exact.keys() == rounded.keys()
    assert all(abs(exact[k] - rounded[k]) < 0.05 for k in exact)
