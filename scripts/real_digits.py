"""The real-digit study: each approach trained upright on real handwritten digits, reloaded, and
tested upright, turned by 90 degrees and turned by random angles.

    python scripts/real_digits.py                                  # configs/compare/digits.yaml
    python scripts/real_digits.py --study configs/compare/digits.yaml --draws 4 --json digits.json

It runs the study with ``python -m symtrain compare`` (resumable: finished runs are skipped),
then reloads every run with ``symtrain.load_model``, as a user would, and prints a Markdown
table: parameters, accuracy on the test digits upright, turned by 90 degrees, and turned by
``--draws`` seeded random angles in [0, 360) each (bilinear, as ``--data.test_orientation any``
turns them), and the fit's wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import symtrain  # noqa: E402
from symtrain.compare import cells, parse_study, study_dir  # noqa: E402
from symtrain.data import MNIST5k  # noqa: E402
from symtrain.data.digits import orient  # noqa: E402


def accuracy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        predictions = torch.cat([net(batch.float() / 255).argmax(dim=1) for batch in images.split(500)])
    return (predictions == labels).float().mean().item()


def evaluate(run_dir: Path, draws: int) -> dict[str, float]:
    """Accuracy of the run's reloaded model on its own test digits, upright and turned."""
    data_args = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["init_args"]
    data = MNIST5k(**{**data_args, "test_orientation": "upright"})
    data.setup()
    test = data.splits["test"]
    net = symtrain.load_model(run_dir)
    turned = [orient(test.images, "any", torch.Generator().manual_seed(1000 + d)) for d in range(draws)]
    return {
        "upright": accuracy(net, test.images, test.labels),
        "rot90": accuracy(net, torch.rot90(test.images, 1, dims=(-2, -1)), test.labels),
        "random_angle": sum(accuracy(net, images, test.labels) for images in turned) / draws,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--study", default="configs/compare/digits.yaml", help="a compare study on MNIST5k")
    parser.add_argument("--draws", type=int, default=4, help="random angles per test digit")
    parser.add_argument("--no-train", action="store_true", help="only test runs trained before")
    parser.add_argument("--json", help="also write the table's figures to this file")
    args = parser.parse_args()

    if not args.no_train:
        command = [sys.executable, "-m", "symtrain", "compare", "--config", args.study]
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            sys.exit("symtrain: error: the study did not finish: run this script again to resume it")
    study, _ = parse_study(["--config", args.study])
    rows = []
    for cell in cells(study):
        run_dir = study_dir(study) / cell.run_name
        summary = json.loads((run_dir / "summary.json").read_text())
        rows.append(
            {
                "approach": cell.approach,
                "seed": cell.seed,
                "params": summary["params"],
                **evaluate(run_dir, args.draws),
                "fit_seconds": summary["fit_seconds"],
            }
        )
    print(f"\n{args.study}: trained upright, tested on {args.draws} random angles per digit\n")
    print("| approach | seed | params | upright | rot90 | random angle | fit s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['approach']} | {row['seed']} | {row['params']:,} | {row['upright']:.3f} | "
            f"{row['rot90']:.3f} | {row['random_angle']:.3f} | {row['fit_seconds']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
