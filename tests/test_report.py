"""The comparison report: built from run directories, complete, and rendered by a real browser."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from symtrain.cli import main
from symtrain.errors import SymtrainError
from symtrain.report import build_report

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = [
    "--config",
    str(CONFIGS / "trainer" / "debug.yaml"),
    "--data.num_train=64",
    "--data.num_val=32",
    "--data.num_test=32",
    "--model.backbone.init_args.width=4",
    "--metrics.num_samples=16",
    "--metrics.test_num_samples=16",
    "--run.wandb=false",
    "--run.quiet=true",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny runs (two seeds of one approach, one of another) and their report."""
    root = tmp_path_factory.mktemp("runs")
    cells = [("cnn", "cnn.yaml", 0), ("cnn", "cnn.yaml", 1), ("aps", "antialiased_aps.yaml", 0)]
    for label, config, seed in cells:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("sys.argv", ["symtrain"])  # pytest's own arguments are not the CLI's
            main(
                [
                    "fit",
                    "--config",
                    str(CONFIGS / "quickstart.yaml"),
                    "--config",
                    str(CONFIGS / "backbone" / config),
                ]
                + [
                    *TINY,
                    f"--seed_everything={seed}",
                    f"--run.name={label}-s{seed}",
                    f"--run.approach={label} + none",
                ]
                + [f"--trainer.default_root_dir={root}"]
            )
    unfinished = root / "stopped-early"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("{}\n")
    runs = sorted(p for p in root.iterdir() if (p / "config.yaml").is_file())
    return {**build_report(runs, root / "report", title="tiny study"), "root": root}


def not_blank(image: Image.Image) -> bool:
    """Drawn on, not just axes: empty labelled axes have grey contrast too, but no colour; every
    figure has coloured lines or coloured predictions."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    colored = (pixels.max(axis=2) - pixels.min(axis=2)) > 60
    return pixels.mean(axis=2).std() > 10 and colored.mean() > 0.002


def test_the_report_shows_every_run_with_mean_and_std_over_seeds(report: dict[str, Path]) -> None:
    html, markdown = report["html"].read_text(), report["markdown"].read_text()
    for run in ("cnn-s0", "cnn-s1", "aps-s0"):
        assert run in html and run in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| cnn + none | 2 |")]
    # accuracy, then one table per measure: invariance error, round trip, consistency,
    # jaggedness, the Lie derivatives and relative stability to diffeomorphisms
    assert len(rows) == 7 and all("±" in row for row in rows), rows
    assert "| approach | seeds | D_f | G_f | R_f |" in markdown
    lie = "| approach | seeds | translation_x | translation_y | rotation | scale | shear | stretch |"
    assert lie in markdown
    assert any(line.startswith("| aps + none | 1 |") for line in markdown.splitlines())
    assert "stopped-early" in html, "an unfinished run is named, not shown"
    assert "invariance error" in html and "consistency" in html  # the definitions, from the measures
    assert "Petrini et al. 2021" in html and "floor" not in html
    pngs = sorted(report["figures_dir"].glob("*.png"))
    assert [p.name for p in pngs] == [
        "accuracy_vs_rotation.png",
        "accuracy_vs_shift.png",
        "accuracy_vs_shift_diagonal.png",
        "error_vs_stability.png",
        "examples.png",
        "layerwise.png",
        "stability.png",
        "stability_per_layer.png",
    ]
    for png in pngs:
        assert not_blank(Image.open(png)), png


def test_a_directory_that_is_not_a_run_is_named(tmp_path: Path) -> None:
    with pytest.raises(SymtrainError, match=f"'{tmp_path}' is not a run directory"):
        build_report([tmp_path], tmp_path / "report")
    with pytest.raises(SymtrainError, match="no run directories given"):
        build_report([], tmp_path / "report")


def test_data_that_cannot_be_rebuilt_leaves_out_only_the_examples(
    report: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "elsewhere"
    shutil.copytree(report["root"] / "aps-s0", run, ignore=shutil.ignore_patterns("checkpoints"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"] = {"class_path": "symtrain.data.NotHere", "init_args": {}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    paths = build_report([run], tmp_path / "report")
    assert not (paths["figures_dir"] / "examples.png").exists()
    assert "examples left out: the data could not be rebuilt" in paths["html"].read_text()


@pytest.mark.slow
def test_the_html_report_renders_in_headless_chromium(report: dict[str, Path], tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "the report test needs Chromium (make test installs it)"
    html = report["html"].read_text()
    sources = re.findall(r"<img [^>]*src='([^']+)'", html)
    assert len(sources) == 8 and all(src.startswith("data:image/png;base64,") for src in sources)
    assert "http" not in html.replace("http-equiv", ""), "self-contained: nothing to fetch"
    for src in sources:
        assert not_blank(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))

    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1200,4000",
    ]
    url = report["html"].resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<h1>tiny study</h1>" in dom.stdout and dom.stdout.count("<table>") == 7
    assert dom.stdout.count("<img ") == 8

    screenshot = tmp_path / "report.png"
    shot = subprocess.run(
        [*flags, "--enable-logging=stderr", "--v=0", f"--screenshot={screenshot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    assert "Uncaught" not in shot.stderr and ":CONSOLE(" not in shot.stderr, shot.stderr[-2000:]
    page = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.int16)
    assert page.shape[:2] == (4000, 1200)
    colored = (page.max(axis=2) - page.min(axis=2)) > 60  # plot lines and predictions, not grey text
    dark = page.mean(axis=2) < 100  # text, table rules, example images
    assert colored.mean() > 0.001 and dark.mean() > 0.01, (colored.mean(), dark.mean())
