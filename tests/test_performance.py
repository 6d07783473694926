"""The fast paths: batched in-memory loading, lazy heavy imports, exported prediction, the
performance options, and the benchmark script itself."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from symtrain.backbones import EquivariantCNN, StandardCNN
from symtrain.data import SyntheticShapes
from symtrain.module import SymmetryModule

ROOT = Path(__file__).resolve().parents[1]


def tiny_shapes(**kwargs: object) -> SyntheticShapes:
    return SyntheticShapes(num_train=96, num_val=32, num_test=40, batch_size=16, **kwargs)


def test_a_batch_is_cut_with_one_indexing_and_matches_the_samples() -> None:
    data = tiny_shapes()
    data.setup("fit")
    loader = data.val_dataloader()
    images, labels = next(iter(loader))
    split = data.splits["val"]
    assert images.dtype == torch.uint8 and images.shape == (16, 1, 32, 32)
    assert torch.equal(images, split.images[:16]) and torch.equal(labels, split.labels[:16])
    assert sum(len(batch[1]) for batch in loader) == len(split)


def fake_trainer(device: str) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))


@pytest.mark.parametrize(
    "device,on_device,num_workers,expected",
    [("meta", True, 0, "meta"), ("meta", False, 0, "cpu"), ("meta", True, 2, "cpu"), ("cpu", True, 0, "cpu")],
)
def test_splits_move_to_an_accelerator_once(
    device: str, on_device: bool, num_workers: int, expected: str
) -> None:
    """On an accelerator ("meta" stands in for a GPU here) the splits are copied to it in setup,
    unless worker processes must index them on the host."""
    data = tiny_shapes(on_device=on_device, num_workers=num_workers)
    data.trainer = fake_trainer(device)
    data.setup("fit")
    assert {split.images.device.type for split in data.splits.values()} == {expected}
    assert {split.labels.device.type for split in data.splits.values()} == {expected}


def test_help_imports_neither_escnn_nor_wandb() -> None:
    """The command line starts without the heavy optional imports; a model that needs escnn
    imports it when it is built."""
    code = (
        "import sys\n"
        "from symtrain.cli import main\n"
        "try:\n    main(['fit', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'escnn' not in sys.modules and 'wandb' not in sys.modules, 'imported eagerly'\n"
        "from symtrain.backbones import EquivariantCNN\n"
        "EquivariantCNN(1, width=4, depth=1)\n"
        "assert 'escnn' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "EquivariantCNN" in done.stdout or "backbone" in done.stdout


def test_top_level_help_lists_every_subcommand_without_importing_torch() -> None:
    """``python -m symtrain --help`` answers from a light parser (no torch, no Lightning), and
    names exactly the subcommands that the command line runs."""
    from lightning.pytorch.cli import LightningCLI

    from symtrain.__main__ import SUBCOMMANDS
    from symtrain.compare import COMMANDS

    assert list(SUBCOMMANDS) == [*LightningCLI.subcommands(), *COMMANDS]
    code = (
        "import sys\n"
        "sys.argv = ['symtrain', '--help']\n"
        "from symtrain.__main__ import run\n"
        "run()\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning', 'numpy'})\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in done.stdout
    assert "python -m symtrain fit --help" in done.stdout


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_escnn_predicts_through_its_export_with_the_same_outputs(task: str) -> None:
    backbone = partial(EquivariantCNN, group="C", order=4, width=4, depth=2)
    module = SymmetryModule(backbone, num_classes=8, task=task)
    data = tiny_shapes()
    data.with_masks = task == "segmentation"
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    batches = trainer.predict(module, datamodule=data)
    logits = torch.cat([batch["logits"] for batch in batches])
    module.eval()
    with torch.no_grad():
        expected = module.net(data.splits["test"].images.float() / 255)
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert "_predictor" not in module.__dict__  # the exported copy is dropped after predicting


def train_briefly(module: SymmetryModule, **length: int) -> pl.Trainer:
    """Fit on the tiny shapes on the CPU, training only, with nothing written."""
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **length,
    )
    trainer.fit(module, datamodule=tiny_shapes())
    return trainer


@pytest.mark.parametrize("backbone_name", ["cnn", "escnn_c4"])
def test_channels_last_trains_to_the_same_loss(backbone_name: str) -> None:
    """channels_last changes the memory order only: the same seed gives the same training."""

    def final_loss(channels_last: bool) -> float:
        pl.seed_everything(0, verbose=False)
        if backbone_name == "cnn":
            backbone = partial(StandardCNN, width=4, depth=2)
        else:
            backbone = partial(EquivariantCNN, width=4, depth=2)
        module = SymmetryModule(backbone, num_classes=8, channels_last=channels_last)
        trainer = train_briefly(module, max_epochs=1)
        if channels_last:
            convs = [m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d)]
            assert all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convs)
        return float(trainer.callback_metrics["train/loss"])

    assert final_loss(True) == pytest.approx(final_loss(False), rel=1e-4)


def test_compile_option_trains_through_torch_compile() -> None:
    module = SymmetryModule(partial(StandardCNN, width=4, depth=1), num_classes=8, compile=True)
    trainer = train_briefly(module, max_steps=2)
    compiled = module.__dict__["_compiled"]
    assert compiled is not None and compiled._orig_mod is module.net
    assert not any(key.startswith("_compiled") for key in module.state_dict())  # no second copy
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))


@pytest.mark.slow
def test_benchmark_runs_and_writes_every_figure(tmp_path: Path) -> None:
    """`scripts/benchmark.py --tiny` (the quick benchmark at the smallest sizes) runs every
    section and writes the documented keys with plausible values."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "--tiny", "--device", "cpu", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    for key in (
        "framework_overhead_ratio",
        "metrics_epoch_share",
        "escnn_train_ratio",
        "escnn_export_infer_ratio",
    ):
        assert 0 < figures[key] < 100, key
    shares = figures["augmentation_step_share"]
    assert set(shares) == {"rot90", "flip", "shift", "rotation", "affine", "elastic"}
    assert all(0 < share < 1 for share in shares.values())
    assert 0 < figures["startup_help_s"] < figures["startup_fit_help_s"] < 300
    assert len(figures["scaling"]) == 3 and all(row["epoch_s"] > 0 for row in figures["scaling"])
    assert "| framework overhead" in done.stdout and "| train images |" in done.stdout
