"""The shapes table of docs/guides/routes.md: each shipped backbone config trained upright
with the quickstart, tested on shapes turned by multiples of 90 degrees and by any angle, with the run's own
invariance measures beside.

    python scripts/shapes_table.py                       # every backbone config, runs/shapes_table/
    python scripts/shapes_table.py --backbones cnn escnn_c4

Each config is one ``fit`` (``configs/quickstart.yaml`` + ``configs/backbone/<name>.yaml``),
then ``test`` of its best checkpoint on shapes turned by multiples of 90 degrees (accuracy and
every measure) and by any angle (accuracy); finished runs and tests are reused (delete a
``<name>-rot90`` directory to measure again). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = [
    "cnn",
    "antialiased_blur",
    "antialiased_aps",
    "escnn_c4",
    "escnn_c8",
    "escnn_d4",
    "escnn_so2",
    "escnn_o2",
]
COLUMNS = [
    ("rot90 invariance error", "test/equiv/rot90/invariance_error"),
    ("flip invariance error", "test/equiv/flip/invariance_error"),
    ("circular-shift invariance error", "test/equiv/circular_shift/invariance_error"),
    ("circular-shift consistency", "test/equiv/circular_shift/consistency"),
    ("rotation invariance error", "test/equiv/rotation/invariance_error"),
    ("rotation round trip", "test/equiv/rotation/round_trip_error"),
]


def symtrain(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "symtrain", *args], cwd=ROOT, check=True)


def number(value: float) -> str:
    return f"{value:.0e}" if 0 < abs(value) < 1e-3 else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=BACKBONES)
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "shapes_table")
    args = parser.parse_args()
    header = ["backbone config", "params", "test acc, rot90", "test acc, any angle", *(c for c, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for name in args.backbones:
        run = args.root / name
        if not (run / "summary.json").is_file():
            symtrain(
                "fit", "--config", "configs/quickstart.yaml", "--config", f"configs/backbone/{name}.yaml",
                "--data.init_args.test_orientation", "rot90", "--run.wandb", "false",
                f"--trainer.default_root_dir={args.root}", f"--run.name={name}",
            )  # fmt: skip
        tested = {}
        for orientation in ("rot90", "any"):  # the best checkpoint, measured by today's code
            summary = args.root / f"{name}-{orientation}" / "summary.json"
            if not summary.is_file():
                symtrain(
                    "test", "--config", str(run / "config.yaml"),
                    "--ckpt_path", str(run / "checkpoints" / "best.ckpt"),
                    "--data.init_args.test_orientation", orientation, "--run.wandb", "false",
                    f"--trainer.default_root_dir={args.root}", f"--run.name={name}-{orientation}",
                )  # fmt: skip
            tested[orientation] = json.loads(summary.read_text())
        metrics, acc_any = tested["rot90"]["metrics"], tested["any"]["metrics"]["test/acc"]
        params = json.loads((run / "summary.json").read_text())["params"]
        row = [name, f"{params:,}", f"{metrics['test/acc']:.2f}", f"{acc_any:.2f}"]
        lines.append("| " + " | ".join(row + [number(metrics[key]) for _, key in COLUMNS]) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
