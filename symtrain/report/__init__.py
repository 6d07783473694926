"""The comparison report: every approach's accuracy and invariance (or, for segmentation runs,
mIoU and equivariance) side by side, from run directories alone (``python -m symtrain report
RUN_DIR...``, or at the end of ``compare``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from symtrain.report import figures as plots
from symtrain.report.collect import (
    Approach,
    Failure,
    Run,
    Runs,
    curves_of,
    families,
    is_run_dir,
    read_runs,
    task_of,
)
from symtrain.report.page import failure_notes, html_page, markdown

__all__ = ["Approach", "Failure", "Run", "Runs", "build_report", "is_run_dir", "read_runs"]


def build_report(
    run_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    title: str = "symtrain comparison",
    examples: int = 4,
) -> dict[str, Path]:
    """Write ``report.html`` (self-contained), ``report.md`` and ``figures/*.png`` to ``out_dir``.

    Args:
        run_dirs: run directories; unfinished ones (no ``summary.json``) are listed, not shown;
            failed ones (a ``failure.json``: a model ``measure`` could not measure) are a row
            each, with the reason in place of the numbers.
        out_dir: where the report goes.
        title: the report's heading.
        examples: test images in the example figure.

    Returns:
        The paths written: ``html``, ``markdown`` and ``figures_dir``.

    Raises:
        SymtrainError: if a path is not a run directory, no run has finished (every run failed:
            the first failure's reason), or the runs mix classification and segmentation.
    """
    runs = read_runs(run_dirs)
    approaches, unfinished = runs.approaches, runs.unfinished
    task = task_of(approaches)
    measured = families(approaches)
    out = Path(out_dir)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    notes = [f"not finished, left out: {', '.join(str(p) for p in unfinished)}"] if unfinished else []
    notes += failure_notes(runs.failed)
    notes += [
        f"{task.score_label} n/a for {a.name}: {a.accuracy_absent or 'the runs recorded none'}"
        for a in approaches
        if not a.values(f"test/{task.score}")
    ]
    candidates = [
        (
            f"Test {task.score_label} against {axis['label'].split(' (')[0]} (mean ± std over seeds)",
            plots.score_curve(
                approaches,
                f"test/{name}",
                axis["axis"],
                axis["label"],
                figures_dir / f"{task.score_label.lower()}_vs_{name}.png",
                task,
            ),
        )
        for name, axis in curves_of(approaches, task).items()
    ]
    candidates += [
        (
            "Layer-wise equivariance error of each stage's feature map (log scale below 1e-3 is linear)",
            plots.layerwise(approaches, measured, figures_dir / "layerwise.png"),
        ),
        (
            "Lie derivatives |L_X f| and relative stability to diffeomorphisms R_f (mean over seeds)",
            plots.stability(approaches, figures_dir / "stability.png"),
        ),
        (
            "R_f of each stage's feature map, and each stage's share of the Lie derivatives where measured",
            plots.stability_per_layer(approaches, figures_dir / "stability_per_layer.png"),
        ),
        (
            "Test error against R_f, one point per run (Petrini et al. 2021's plot)",
            plots.error_against_stability(approaches, task, figures_dir / "error_vs_stability.png"),
        ),
        (
            "Invariance measures against test accuracy, one point per model (Gruver et al. 2022's plot)",
            plots.measures_against_accuracy(approaches, task, figures_dir / "measures_vs_accuracy.png"),
        ),
    ]
    example_path, note = None, None
    if examples and task.name == "segmentation":
        note = (
            "examples left out: they show predicted classes of whole images, and these are segmentation runs"
        )
    elif examples:
        example_path, note = plots.examples(approaches, figures_dir / "examples.png", examples)
    candidates.append(
        (
            "Example test images under each view with each approach's prediction (green: right, red: wrong)",
            example_path,
        )
    )
    notes += [note] if note else []
    shown = [(caption, path) for caption, path in candidates if path is not None]
    (out / "report.md").write_text(markdown(title, approaches, measured, shown, notes, task, runs.failed))
    (out / "report.html").write_text(html_page(title, approaches, measured, shown, notes, task, runs.failed))
    return {"html": out / "report.html", "markdown": out / "report.md", "figures_dir": figures_dir}
