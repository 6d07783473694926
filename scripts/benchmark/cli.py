"""The benchmark's options, and the run of the chosen sections at the chosen sizes."""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import scripts.benchmark
from scripts.benchmark.report import report, write_json
from scripts.benchmark.section import Bench
from scripts.benchmark.sections import SECTIONS
from scripts.benchmark.sizes import FULL, QUICK, TINY


def build_parser() -> argparse.ArgumentParser:
    description = scripts.benchmark.__doc__.splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmark", description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes (under two minutes on a CPU)")
    parser.add_argument("--tiny", action="store_true", help="smallest sizes: only checks that it runs")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--escnn", nargs="+", help="backbone configs of the escnn section (default per size)")
    parser.add_argument(
        "--fit-args",
        default="",
        help="extra symtrain flags for the overhead section's fits, e.g. '--model.channels_last true' "
        "(the hand-written loop stays plain fp32, so the ratio shows what the option gains)",
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    sys.argv = sys.argv[:1]  # the CLI instances of the sections get their arguments from `args=`
    sizes = TINY if args.tiny else QUICK if args.quick else FULL
    if args.escnn:
        sizes = replace(sizes, escnn_configs=tuple(args.escnn))
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    results: dict[str, Any] = {
        "mode": "tiny" if args.tiny else "quick" if args.quick else "full",
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    step_batch = 16 if args.tiny else 128  # the batch of the step-level rows (strategies, escnn)
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), accelerator, device, sizes, args.fit_args, step_batch)
        for name, section in SECTIONS.items():
            if name in args.sections:
                results.update(section.run(bench))
    print(report(results))
    if args.json:
        write_json(args.json, results)
    return results
