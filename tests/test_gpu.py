"""On a CUDA device: data kept on the device, mixed precision, channels_last, the metrics and
exported prediction, for a plain and an escnn model. Runs only where a GPU is present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from symtrain.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("backbone", ["cnn", "escnn_c4"])
def test_fit_test_predict_on_a_gpu(backbone: str, tmp_path: Path) -> None:
    common = [
        "--config", str(CONFIGS / "quickstart.yaml"),
        "--config", str(CONFIGS / "backbone" / f"{backbone}.yaml"),
        "--config", str(CONFIGS / "trainer" / "gpu.yaml"),
        "--data.num_train=512", "--data.num_val=128", "--data.num_test=128",
        "--run.wandb=false", "--run.quiet=true", f"--trainer.default_root_dir={tmp_path}",
    ]  # fmt: skip
    main(["fit", *common, "--trainer.max_epochs=2", "--model.channels_last=true"])
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text())
    metrics = summary["metrics"]
    assert metrics["test/acc"] > 0.2
    assert {"test/equiv/rot90/layer/stage1", "test/equiv/flip/consistency"} <= set(metrics)
    if backbone == "escnn_c4":  # exact under bf16 too: the group acts on the pixel grid exactly
        assert metrics["test/equiv/rot90/invariance_error"] < 1e-2
    main(["predict", *common, f"--ckpt_path={run / 'checkpoints' / 'best.ckpt'}"])
    (predicted,) = [p for p in tmp_path.iterdir() if p.is_dir() and p != run]
    predictions = torch.load(predicted / "predictions.pt")
    accuracy = (predictions["preds"] == predictions["labels"]).float().mean().item()
    assert accuracy == pytest.approx(metrics["test/acc"], abs=0.02)
