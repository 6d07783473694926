"""What the ``measure`` tests share: where the configs are, and the tiny shapes data."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHAPES = ["--config", str(CONFIGS / "data" / "shapes.yaml")]
TINY_SHAPES = ["--data.num_train=64", "--data.num_val=32", "--data.num_test=200", "--data.batch_size=32"]
