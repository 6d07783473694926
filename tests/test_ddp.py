"""Two CPU processes (Lightning's relaunching DDP, gloo) measure exactly what one process does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from symtrain.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--config", str(ROOT / "configs" / "quickstart.yaml"),
    "--config", str(ROOT / "configs" / "trainer" / "debug.yaml"),
    "--data.num_train=256", "--data.num_val=64", "--data.num_test=64", "--data.batch_size=32",
    "--model.backbone.width=4", "--run.wandb=false", "--run.quiet=true",
]  # fmt: skip


@pytest.mark.slow
def test_two_process_metrics_equal_one_process_metrics(tmp_path: Path) -> None:
    main(["fit", *TINY, f"--trainer.default_root_dir={tmp_path}", "--run.name=trained"])
    config = tmp_path / "trained" / "config.yaml"
    checkpoint = tmp_path / "trained" / "checkpoints" / "best.ckpt"
    test = ["test", "--config", str(config), f"--ckpt_path={checkpoint}", "--trainer.accelerator=cpu"]
    main([*test, "--trainer.devices=1", "--run.name=one"])
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "SYMTRAIN_RUN_DIR")}
    command = [sys.executable, "-m", "symtrain", *test, "--trainer.devices=2", "--trainer.strategy=ddp"]
    done = subprocess.run([*command, "--run.name=two"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "trained", "two"]  # one run for 2 processes
    one = json.loads((tmp_path / "one" / "summary.json").read_text())["metrics"]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())["metrics"]
    assert set(one) == set(two) and any("/equiv/" in key for key in one)
    for key, value in one.items():
        if key.endswith(("/acc", "/consistency")):
            assert two[key] == value, key  # counts: exactly equal
        else:
            assert two[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
