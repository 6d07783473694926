"""Scaling: training time per epoch against dataset size and image size (linear in images and
in pixels: the normalised ratios should be ~1), and peak memory."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from scripts.benchmark.fits import fit_round
from scripts.benchmark.section import Bench, Section
from scripts.benchmark.sizes import Sizes


def scaling(root: Path, accelerator: str, device: torch.device, sizes: Sizes) -> dict[str, Any]:
    rows = []
    base_n, base_size = sizes.scaling_train[0], sizes.scaling_image[0]
    configs = [(n, base_size) for n in sizes.scaling_train] + [(base_n, s) for s in sizes.scaling_image[1:]]
    for num_train, image_size in configs:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        run_sizes = replace(sizes, num_train=num_train)
        fit = fit_round(root, accelerator, run_sizes, "--data.init_args.image_size", str(image_size),
                        "--metrics.families", "[]")  # fmt: skip
        rows.append({"num_train": num_train, "image_size": image_size, "epoch_s": fit["epoch_s"],
                     "peak_memory_mb": fit["peak_memory"] / 2**20})  # fmt: skip
    base = rows[0]
    for row in rows:
        work = (row["num_train"] / base["num_train"]) * (row["image_size"] / base["image_size"]) ** 2
        row["time_per_work_vs_first"] = row["epoch_s"] / base["epoch_s"] / work
    return {"scaling": rows}


def run(bench: Bench) -> dict[str, Any]:
    return scaling(bench.root, bench.accelerator, bench.device, bench.sizes)


def notes(results: dict[str, Any]) -> list[str]:
    if "scaling" not in results:
        return []
    lines = [
        "",
        "| train images | image size | epoch (s) | time per image-pixel vs first | peak memory (MiB) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in results["scaling"]:
        cells = (
            r["num_train"],
            r["image_size"],
            f"{r['epoch_s']:.2f}",
            f"{r['time_per_work_vs_first']:.2f}",
        )
        lines.append(f"| {' | '.join(map(str, cells))} | {r['peak_memory_mb']:.0f} |")
    return lines


# its table comes last, after the data section's notes
SECTION = Section("scaling", order=60, run=run, notes=notes, notes_order=95)
