"""The comparison report: built from run directories, complete, and rendered by a real browser."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from browser import render
from PIL import Image

from symtrain.cli import main
from symtrain.errors import SymtrainError
from symtrain.report import build_report
from symtrain.report.collect import Approach, Run, is_run_dir, read_runs
from symtrain.report.figures import accuracy_panels, accuracy_points

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
        "measures_vs_accuracy.png",
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
    html = report["html"].read_text()
    sources = re.findall(r"<img [^>]*src='([^']+)'", html)
    assert len(sources) == 9 and all(src.startswith("data:image/png;base64,") for src in sources)
    assert "http" not in html.replace("http-equiv", ""), "self-contained: nothing to fetch"
    for src in sources:
        assert not_blank(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))

    screenshot = tmp_path / "report.png"
    dom = render(report["html"].resolve().as_uri(), screenshot, window=(1200, 4000))
    assert "<h1>tiny study</h1>" in dom and dom.count("<table>") == 7
    assert dom.count("<img ") == 9
    page = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.int16)
    assert page.shape[:2] == (4000, 1200)
    colored = (page.max(axis=2) - page.min(axis=2)) > 60  # plot lines and predictions, not grey text
    dark = page.mean(axis=2) < 100  # text, table rules, example images
    assert colored.mean() > 0.001 and dark.mean() > 0.01, (colored.mean(), dark.mean())


# A study of trained runs, models measured by `python -m symtrain measure` (one label-free) and a
# model that failed, written as those commands leave them: summary.json (or failure.json) alone.
FAILED = {
    "model": "vit_nope",
    "reason": "unknown model vit_nope: neither timm nor torchvision has it",
    "command": "python -m symtrain measure --model vit_nope",
}
LABEL_FREE = "the classes of the data do not map onto the 1000 ImageNet outputs of the model"


def measured_run(trained: Path, run_dir: Path, model: str, accuracy: bool, scale: float) -> Path:
    """A run directory as ``measure`` writes it, its numbers a trained run's scaled by ``scale``:
    no checkpoint, no training time, and, label-free, no accuracy at all."""
    summary = copy.deepcopy(json.loads((trained / "summary.json").read_text()))
    summary.update(run_name=model, approach=model, fit_seconds=None, checkpoints={"best": None, "last": None})
    summary["metrics"] = {
        key: value * scale
        for key, value in summary["metrics"].items()
        if accuracy or not (key.endswith("/acc") or key.endswith("/loss"))
    }
    if accuracy:
        summary["metrics"]["test/acc"] = min(summary["metrics"]["test/acc"], 1.0)
        summary["measured"] = {"source": "timm", "model": model, "accuracy": "by ImageNet synset"}
    else:
        summary["measured"] = {
            "source": "timm",
            "model": model,
            "accuracy": None,
            "accuracy_absent": LABEL_FREE,
        }
        summary["curves"] = {
            name: {k: v for k, v in c.items() if k != "acc"} for name, c in summary["curves"].items()
        }
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def failed_run(run_dir: Path, failure: dict = FAILED) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "failure.json").write_text(json.dumps(failure))
    return run_dir


@pytest.fixture(scope="module")
def mixed(report: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two trained runs, two measured ones (one label-free) and a failed one, and their report."""
    root = tmp_path_factory.mktemp("mixed")
    trained = [shutil.copytree(report["root"] / name, root / name) for name in ("cnn-s0", "aps-s0")]
    runs = [
        *trained,
        measured_run(trained[1], root / "resnet50", "resnet50.a1_in1k", accuracy=True, scale=0.9),
        measured_run(trained[1], root / "convnext", "convnext_tiny", accuracy=False, scale=0.5),
        failed_run(root / "vit"),
    ]
    return {**build_report(runs, root / "report", title="mixed study"), "runs": runs}


def table_widths(page: str) -> list[set[int]]:
    """The widths (cells, colspans counted) of each HTML table's rows: one width per table when
    every row fills the header."""
    widths = []
    for table in re.findall(r"<table>(.*?)</table>", page, flags=re.S):
        rows = re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)
        widths.append(
            {
                sum(int(span or 1) for span in re.findall(r"<t[dh](?: colspan='(\d+)')?[ >]", row))
                for row in rows
            }
        )
    return widths


def test_failed_and_measured_runs_are_rows_of_the_report(mixed: dict[str, Path]) -> None:
    html, markdown = mixed["html"].read_text(), mixed["markdown"].read_text()
    for page in (html, markdown):
        assert "vit_nope" in page and FAILED["reason"] in page
        assert f"failed: vit_nope ({FAILED['reason']})" in page  # the note
        assert f"accuracy n/a for convnext_tiny: {LABEL_FREE}" in page
        assert "measured: timm resnet50.a1_in1k" in page
    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("| approach | seeds | upright |"))
    failed = [line for line in lines if line.startswith("| vit_nope |")]
    assert failed == [f"| vit_nope |  | failed: {FAILED['reason']} |" + "  |" * (header.count("|") - 4)], (
        failed
    )
    assert any(line.startswith("| convnext_tiny | 1 | n/a |") for line in lines)
    assert any(
        line.startswith("| resnet50.a1_in1k | 1 | ") and "n/a" not in line.split("|")[3] for line in lines
    )
    assert "class='failed'>failed: vit_nope" not in html and "class='failed'>failed: unknown model" in html
    assert all(len(widths) == 1 for widths in table_widths(html)), table_widths(html)
    assert "examples leave out resnet50.a1_in1k, convnext_tiny: measured, not trained here" in html
    pngs = {p.name for p in mixed["figures_dir"].glob("*.png")}
    assert {"measures_vs_accuracy.png", "error_vs_stability.png", "examples.png", "stability.png"} <= pngs
    for png in pngs:
        assert not_blank(Image.open(mixed["figures_dir"] / png)), png


def test_measures_against_accuracy_has_a_point_per_model_with_an_accuracy(mixed: dict[str, Path]) -> None:
    runs = read_runs(mixed["runs"])
    assert [(f.model, f.reason, f.command) for f in runs.failed] == [tuple(FAILED.values())]
    approaches = runs.approaches
    panels = accuracy_panels(approaches)
    assert [label.split(" ")[0] for label, _, _ in panels] == ["mean", "consistency", "R_f"]
    assert "translation_x" in panels[0][0] and "consistency under shift" in panels[1][0]
    assert [log for _, _, log in panels] == [True, False, True]
    for _, points, _ in panels:
        assert [name for name, _, _ in points] == ["cnn + none", "aps + none", "resnet50.a1_in1k"]
    resnet = approaches[2]
    assert panels[2][1][2] == (
        "resnet50.a1_in1k",
        resnet.mean("test/acc") * 100,
        resnet.mean("test/diffeo/R_f"),
    )


def test_accuracy_points_leave_out_models_without_accuracy_or_value() -> None:
    def approach(name: str, *runs: dict) -> Approach:
        return Approach(name, [Run(Path(name), {"metrics": metrics}) for metrics in runs])

    approaches = [
        approach("two seeds", {"test/acc": 0.5, "v": 1.0}, {"test/acc": 0.7, "v": 3.0}),
        approach("label-free", {"v": 2.0}),
        approach("no value", {"test/acc": 0.9}),
        approach("nan", {"test/acc": 0.9, "v": float("nan")}),
    ]
    assert accuracy_points(approaches, lambda a: a.mean("v")) == [("two seeds", pytest.approx(60.0), 2.0)]


def test_one_model_with_an_accuracy_leaves_the_figure_out(report: dict[str, Path], tmp_path: Path) -> None:
    trained = report["root"] / "aps-s0"
    runs = [
        measured_run(trained, tmp_path / "resnet50", "resnet50.a1_in1k", accuracy=True, scale=0.9),
        measured_run(trained, tmp_path / "convnext", "convnext_tiny", accuracy=False, scale=0.5),
    ]
    paths = build_report(runs, tmp_path / "report")
    assert not (paths["figures_dir"] / "measures_vs_accuracy.png").exists()
    assert (paths["figures_dir"] / "error_vs_stability.png").exists()
    assert not (paths["figures_dir"] / "examples.png").exists()
    html = paths["html"].read_text()
    assert "examples left out: no checkpoint to load (resnet50.a1_in1k, convnext_tiny" in html
    assert "one point per model" not in html


def test_a_study_where_every_run_failed_names_the_first_reason(tmp_path: Path) -> None:
    runs = [
        failed_run(tmp_path / "vit"),
        failed_run(tmp_path / "tiny", {"model": "tiny", "reason": "input too small", "command": "x"}),
    ]
    (tmp_path / "vit" / "config.yaml").write_text("{}\n")  # a config too: still failed, not unfinished
    assert all(is_run_dir(run) for run in runs) and not is_run_dir(tmp_path)
    with pytest.raises(
        SymtrainError, match=re.escape(f"every run failed (2); the first, vit_nope: {FAILED['reason']}")
    ):
        build_report(runs, tmp_path / "report")
