"""The report's figures (matplotlib, written as PNG files)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in tests
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from symtrain.report.collect import Approach, Task  # noqa: E402
from symtrain.transforms import CircularShift, Rot90, Rotation, TransformFamily  # noqa: E402

_STYLE = {
    "figure.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def score_curve(
    approaches: list[Approach], curve: str, axis: str, xlabel: str, path: Path, task: Task
) -> Path | None:
    """The task's score (accuracy, or mIoU) against the transformation's magnitude, one line per
    approach (mean ± std over seeds as a band).

    Args:
        approaches: the approaches to draw.
        curve: the key in ``summary.json``'s ``curves``, e.g. ``test/rotation``.
        axis: the curve's x values' key (``angle`` or ``pixels``).
        xlabel: the x axis' label, with its unit.
        path: the PNG to write.
        task: which score the curves hold.

    Returns:
        ``path``, or None when no run recorded the curve.
    """
    with plt.rc_context(_STYLE):
        figure, ax = plt.subplots(figsize=(8.6, 4.0))
        drawn = False
        for approach in approaches:
            curves = [run.summary.get("curves", {}).get(curve) for run in approach.runs]
            curves = [c for c in curves if c and len(c.get(axis, [])) == len(c.get(task.score, []))]
            if not curves:
                continue
            x = np.asarray(curves[0][axis])
            acc = np.asarray([c[task.score] for c in curves if len(c[task.score]) == len(x)]) * 100
            mean = acc.mean(axis=0)
            (line,) = ax.plot(x, mean, marker="o", markersize=3, label=f"{approach.name} (n={len(acc)})")
            if len(acc) > 1:
                std = acc.std(axis=0, ddof=1)
                ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
            drawn = True
        if not drawn:
            plt.close(figure)
            return None
        ax.set(xlabel=xlabel, ylabel=f"test {task.score_label} (%)", ylim=(0, 101))
        if axis == "angle":  # ticks at the multiples of 45°, where the exact symmetries sit
            ax.xaxis.set_major_locator(plt.MultipleLocator(45))
        # Beside the axes: inside, the legend hides the curves' dips.
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
        return _save(figure, path)


def layerwise(approaches: list[Approach], families: list[str], path: Path) -> Path | None:
    """Relative equivariance error of each stage's feature map, per family and approach."""
    with_layers = [
        family
        for family in families
        if any(
            k.startswith(f"test/equiv/{family}/layer/") for a in approaches for r in a.runs for k in r.metrics
        )
    ]
    if not with_layers:
        return None
    with plt.rc_context(_STYLE):
        figure, axes = plt.subplots(
            1, len(with_layers), figsize=(3.4 * len(with_layers) + 1.8, 3.4), squeeze=False
        )
        for ax, family in zip(axes[0], with_layers, strict=True):
            prefix = f"test/equiv/{family}/layer/"
            # Every approach on one x axis, in network order: stages, then the invariant output.
            stages = sorted(
                {
                    k[len(prefix) :]
                    for a in approaches
                    for r in a.runs
                    for k in r.metrics
                    if k.startswith(prefix)
                },
                key=lambda stage: (stage == "invariant", stage),
            )
            for approach in approaches:
                points = [(i, approach.values(prefix + stage)) for i, stage in enumerate(stages)]
                points = [(i, float(np.mean(v))) for i, v in points if v]
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=approach.name)
            ax.set_xticks(range(len(stages)), stages)
            ax.set(title=family, xlabel="feature map", ylabel="relative equivariance error")
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.set_ylim(bottom=0)
        # One legend for all panels: an approach may lack layer values for some families.
        handles = {line.get_label(): line for ax in axes[0] for line in ax.get_lines()}
        beside = {"loc": "upper left", "bbox_to_anchor": (1.02, 1), "frameon": False}
        axes[0][-1].legend(handles.values(), handles.keys(), fontsize=8, **beside)
        return _save(figure, path)


def _act(family: TransformFamily, element: list[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The view of one element on a float batch (B, C, H, W), as the metrics measure it
    (:meth:`TransformFamily.measured`: on the disk or the canvas where the family needs it)."""

    def view(images: torch.Tensor) -> torch.Tensor:
        return family.measured(images, torch.tensor([element]).expand(len(images), -1))

    return view


# (title, action) of the example figure's columns.
_VIEWS = [
    ("upright", lambda x: x),
    ("rotated 90°", _act(Rot90(), [1.0])),
    ("rotated 45° (disk)", _act(Rotation(), [45.0])),
    ("shifted 5 px (circular)", _act(CircularShift(), [5.0, 5.0])),
]


def _test_images(run_dir: Path, count: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The first test images of the run's own data, rebuilt from its config.yaml."""
    data = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    module_name, _, class_name = data["class_path"].rpartition(".")
    datamodule = getattr(importlib.import_module(module_name), class_name)(**data.get("init_args", {}))
    datamodule.setup("test")
    split = datamodule.splits["test"]
    names = list(getattr(datamodule, "class_names", None) or range(int(split.labels.max()) + 1))
    return split.images[:count].float() / 255, split.labels[:count], [str(n) for n in names]


def examples(approaches: list[Approach], path: Path, count: int = 4) -> tuple[Path | None, str | None]:
    """Test images under each view, with each approach's predicted class (green: right).

    Uses the first run of each approach and the first run's data, rebuilt from its config.

    Returns:
        (``path``, None), or (None, a note saying why the figure was left out).
    """
    from symtrain.runs import load_model

    try:
        images, labels, names = _test_images(approaches[0].runs[0].path, count)
    except Exception as error:  # e.g. a download dataset that is not on this machine
        return None, f"examples left out: the data could not be rebuilt ({type(error).__name__}: {error})"
    predictions = {}
    with torch.no_grad():
        for approach in approaches:
            try:
                net = load_model(approach.runs[0].path)
            except Exception as error:  # e.g. checkpoints deleted to save space: the tables still stand
                return None, f"examples left out: {approach.runs[0].path} could not be loaded ({error})"
            predictions[approach.name] = [net(view(images)).argmax(1) for _, view in _VIEWS]
    with plt.rc_context({"figure.dpi": 110}):
        figure, axes = plt.subplots(
            len(images),
            len(_VIEWS),
            figsize=(2.9 * len(_VIEWS), (1.6 + 0.17 * len(approaches)) * len(images)),
            squeeze=False,
        )
        for row, (image, label) in enumerate(zip(images, labels, strict=True)):
            for column, (title, view) in enumerate(_VIEWS):
                ax = axes[row][column]
                shown = view(image[None])[0].permute(1, 2, 0).clamp(0, 1).numpy()
                ax.imshow(shown.squeeze(-1) if shown.shape[-1] == 1 else shown, cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                if row == 0:
                    ax.set_title(title, fontsize=10)
                if column == 0:
                    ax.set_ylabel(f"true: {names[label]}", fontsize=9)
                for line, (name, predicted) in enumerate(predictions.items()):
                    guess = int(predicted[column][row])
                    ax.text(
                        1.04,
                        1 - 0.13 * line,
                        f"{names[guess]}  {name}",
                        transform=ax.transAxes,
                        fontsize=7,
                        va="top",
                        color="tab:green" if guess == int(label) else "tab:red",
                    )
        # Room on the right of each image for the predictions (tight_layout ignores the text).
        figure.subplots_adjust(left=0.03, right=0.86, top=0.95, bottom=0.02, wspace=0.95, hspace=0.12)
        figure.savefig(path)
        plt.close(figure)
        return path, None
