"""The benchmark script (`python -m scripts.benchmark`): each section runs at the smallest sizes
and writes every figure the README and the manual quote, and every section file is registered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def check_fit_sections(figures: dict[str, Any], stdout: str) -> None:
    assert 0 < figures["framework_overhead_ratio"] < 100 and 0 < figures["metrics_epoch_share"] < 100
    assert 0 < figures["sgd_framework_overhead_ratio"] < 100 and 0 < figures["measure_over_callback"] < 100
    costs = figures["measure_epoch_share"]  # every measure has its row, the opt-in ones too
    assert {"lie (test)", "diffeo (test)", "jaggedness (test)", "lie_layers (test, opt-in)"} <= set(costs)
    assert len(figures["scaling"]) == 3 and all(row["epoch_s"] > 0 for row in figures["scaling"])
    assert "| framework overhead, SGD + MultiStepLR recipe" in stdout and "| train images |" in stdout


def check_step_sections(figures: dict[str, Any], stdout: str) -> None:
    assert 0 < figures["escnn_train_ratio"] < 100 and 0 < figures["escnn_export_infer_ratio"] < 100
    assert 0 < figures["escnn"]["escnn_so2"]["fourier_export_infer_ratio"] < 100  # the Fourier twin
    shares = figures["augmentation_step_share"]
    assert set(shares) == {"rot90", "flip", "shift", "rotation", "affine", "elastic", "diffeo"}
    assert all(0 < share < 1 for share in shares.values())
    strategies = figures["strategy_cost"]  # every wrapping strategy shipped in configs/symmetry
    assert {"average_c4", "average_test_c4", "canonicalize_c4", "canonicalize_d4"} <= set(strategies)
    assert all(0 < row["train_ratio"] < 100 and 0 < row["infer_ratio"] < 100 for row in strategies.values())


def check_backbone_sections(figures: dict[str, Any], stdout: str) -> None:
    assert set(figures["resnet"]) == {"resnet18", "timm_resnet18"}  # the literature's backbones
    assert all(0 < row["framework_overhead_ratio"] < 100 for row in figures["resnet"].values())
    assert figures["resnet"]["resnet18"]["parameters"] > 10_000_000  # ResNet-18 as shipped, not shrunk
    wrn = figures["wide_resnet"]
    assert all(0 < wrn[key] < 100 for key in ("train_ratio", "eval_infer_ratio", "export_infer_ratio"))


def check_process_sections(figures: dict[str, Any], stdout: str) -> None:
    assert 0 < figures["startup_help_s"] < figures["startup_fit_help_s"] < 300
    cost = figures["fit_cost"]  # a real-digit fit, timed from outside and split by its summary
    assert cost["train"] > 0 and cost["measure_test"] > 0 and cost["startup"] < cost["total"]
    assert 0 < figures["compare_cell_startup_forked_s"] and 0 < figures["compare_cell_startup_fresh_s"]
    assert "real-digit fit" in stdout


def check_data_sections(figures: dict[str, Any], stdout: str) -> None:
    rows = figures["streaming_memory"]  # the small and the large folder, streamed and in memory
    assert {(r["num_train"], r["storage"]) for r in rows} == {
        (n, storage) for n in (100, 400) for storage in ("stream", "memory")
    }
    assert all(r["peak_mb"] > 100 and r["fit_s"] > 0 for r in rows)  # torch alone takes more
    assert 0 < figures["stream_over_torchvision"] < 100 and 0 < figures["stream_over_torchvision_pil"] < 100
    assert figures["photo_files"] == 64
    assert set(figures["in_memory_loading"]) == {"shapes", "digits"}
    assert all(
        0 < row["loader_share_of_training_epoch"] < 100 for row in figures["in_memory_loading"].values()
    )
    assert (
        figures["base_pipeline_batched_images_per_s"] > 0
        and figures["base_pipeline_workers_images_per_s"] > 0
    )
    assert "streaming loader img/s" in stdout and "| training files |" in stdout


# The sections in five runs, so that the suite's workers share them.
BENCHMARK_RUNS = {
    "fits": (("overhead", "scaling"), check_fit_sections),
    "steps": (("augmentation", "strategies", "escnn"), check_step_sections),
    "backbones": (("backbones",), check_backbone_sections),
    "processes": (("startup", "cost"), check_process_sections),
    "data": (("data",), check_data_sections),
}


@pytest.mark.slow
@pytest.mark.parametrize("part", BENCHMARK_RUNS)
def test_benchmark_runs_and_writes_every_figure(part: str, tmp_path: Path) -> None:
    """`python -m scripts.benchmark --tiny` (the quick benchmark at the smallest sizes) runs every
    section and writes the documented keys with plausible values."""
    sections, check = BENCHMARK_RUNS[part]
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "scripts.benchmark", "--tiny", "--device", "cpu", "--json", str(out),
         "--sections", *sections],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    check(json.loads(out.read_text()), done.stdout)


def test_the_benchmark_runs_cover_every_section() -> None:
    """Every module of scripts/benchmark/sections/ is a section, and the runs above cover each."""
    import pkgutil

    from scripts.benchmark import sections as package
    from scripts.benchmark.sections import SECTIONS

    assert sorted(module.name for module in pkgutil.iter_modules(package.__path__)) == sorted(SECTIONS)
    covered = [section for sections, _ in BENCHMARK_RUNS.values() for section in sections]
    assert sorted(covered) == sorted(SECTIONS)
