"""The report's figures (matplotlib, written as PNG files)."""

from __future__ import annotations

import importlib
import textwrap
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

# The Lie derivatives' generators, in the measure's order (symtrain.metrics.lie.GENERATORS).
_GENERATORS = ("translation_x", "translation_y", "rotation", "scale", "shear", "stretch")

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
            curves = [
                c for c in curves if c and c.get(task.score) and len(c.get(axis, [])) == len(c[task.score])
            ]
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


def _stages(approaches: list[Approach], prefix: str) -> list[str]:
    """The feature maps with a value under ``prefix`` in any run, in network order: the stages,
    then the invariant map, then the head."""
    found = {k[len(prefix) :] for a in approaches for r in a.runs for k in r.metrics if k.startswith(prefix)}
    return sorted(found, key=lambda stage: ({"invariant": 1, "head": 2}.get(stage, 0), stage))


def _per_layer_panel(ax: plt.Axes, approaches: list[Approach], prefix: str) -> None:
    """One line per approach: the mean over seeds of ``{prefix}{stage}`` against the stage."""
    stages = _stages(approaches, prefix)
    for approach in approaches:
        points = [(i, approach.values(prefix + stage)) for i, stage in enumerate(stages)]
        points = [(i, float(np.mean(v))) for i, v in points if v]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=approach.name)
    ax.set_xticks(range(len(stages)), stages, rotation=30 if len(stages) > 3 else 0)


def _panels(count: int, width: float = 3.4) -> tuple[plt.Figure, list[plt.Axes]]:
    figure, axes = plt.subplots(1, count, figsize=(width * count + 1.8, 3.4), squeeze=False)
    return figure, list(axes[0])


def _legend_beside(axes: list[plt.Axes]) -> None:
    """One legend for all panels, beside the last: an approach may lack values in some."""
    handles = {line.get_label(): line for ax in axes for line in ax.get_lines()}
    handles.update({bars.get_label(): bars for ax in axes for bars in ax.containers})
    handles = {label: handle for label, handle in handles.items() if not label.startswith("_")}  # guides
    axes[-1].legend(
        handles.values(),
        handles.keys(),
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.02, 1),
        frameon=False,
    )


def layerwise(approaches: list[Approach], families: list[str], path: Path) -> Path | None:
    """Relative equivariance error of each stage's feature map, per family and approach."""
    with_layers = [f for f in families if _stages(approaches, f"test/equiv/{f}/layer/")]
    if not with_layers:
        return None
    with plt.rc_context(_STYLE):
        figure, axes = _panels(len(with_layers))
        for ax, family in zip(axes, with_layers, strict=True):
            _per_layer_panel(ax, approaches, f"test/equiv/{family}/layer/")
            ax.set(title=family, xlabel="feature map", ylabel="relative equivariance error")
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.set_ylim(bottom=0)
        _legend_beside(axes)
        return _save(figure, path)


def stability(approaches: list[Approach], path: Path) -> Path | None:
    """Each Lie derivative and R_f per approach: one panel each, one bar per approach (mean over
    seeds, the seeds' spread as an error bar), on log axes."""
    keys = [k for k in (*(f"test/lie/{g}" for g in _GENERATORS), "test/diffeo/R_f") if _any(approaches, k)]
    if not keys:
        return None
    with plt.rc_context(_STYLE):
        figure, axes = _panels(len(keys), width=2.3)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, key in zip(axes, keys, strict=True):
            for i, approach in enumerate(approaches):
                values = approach.values(key)
                if values:
                    ax.bar(
                        i,
                        float(np.mean(values)),
                        yerr=float(np.std(values, ddof=1)) if len(values) > 1 else None,
                        color=colours[i % len(colours)],
                        label=approach.name,
                    )
            ax.set_xticks([])
            ax.set_yscale("log")
            name = key.split("/", 2)[2]
            ax.set_title(name.replace("lie/", "L: ").replace("diffeo/", ""), fontsize=10)
        axes[0].set_ylabel("|L_X f| (per unit of t) or R_f")
        _legend_beside(axes)
        return _save(figure, path)


def stability_per_layer(approaches: list[Approach], path: Path) -> Path | None:
    """R_f of each stage's feature map and, where measured, each stage's share of every Lie
    derivative, one line per approach."""
    prefixes = [("R_f", "test/diffeo/R_f/layer/")]
    prefixes += [(f"L: {g}", f"test/lie/{g}/layer/") for g in _GENERATORS]
    prefixes = [(title, prefix) for title, prefix in prefixes if _stages(approaches, prefix)]
    if not prefixes:
        return None
    with plt.rc_context(_STYLE):
        figure, axes = _panels(len(prefixes), width=3.0)
        for ax, (title, prefix) in zip(axes, prefixes, strict=True):
            _per_layer_panel(ax, approaches, prefix)
            ax.set(title=title, xlabel="feature map")
            if title == "R_f":
                low, high = ax.get_ylim()
                if low > 0 and high / low > 10:  # log only where it spreads a decade or more
                    ax.set_yscale("log")
            else:
                ax.axhline(0, color="0.5", linewidth=0.8)
        axes[0].set_ylabel("R_f, or share of |L_X f|")
        _legend_beside(axes)
        return _save(figure, path)


def error_against_stability(approaches: list[Approach], task: Task, path: Path) -> Path | None:
    """Test error against R_f, one point per run (Petrini et al. 2021's plot), with the paper's
    fit on CIFAR-10, error ≈ 0.2·√R_f, for reference; runs without an accuracy (measured
    label-free) are left out."""
    if task.name != "classification":
        return None
    drawn = {}
    for approach in approaches:
        points = [
            (_number(run.metrics, "test/diffeo/R_f"), _number(run.metrics, "test/acc"))
            for run in approach.runs
        ]
        points = [(r_f, 1 - acc) for r_f, acc in points if r_f is not None and acc is not None]
        if points:
            drawn[approach.name] = points
    if not drawn:
        return None
    with plt.rc_context(_STYLE):
        figure, ax = plt.subplots(figsize=(6.4, 3.6))
        for name, points in drawn.items():
            ax.scatter(*zip(*points, strict=True), label=name, s=60, zorder=3)
        every = [p[0] for points in drawn.values() for p in points]
        r = np.geomspace(max(min(every), 1e-12) / 2, max(max(every) * 2, 1.0), 50)
        reference = "0.2·√R_f (Petrini et al. 2021, CIFAR-10)"
        ax.plot(r, 0.2 * np.sqrt(r), "--", color="tab:purple", linewidth=2, label=reference)
        ax.set(xscale="log", xlabel="R_f (relative stability to diffeomorphisms)", ylabel="test error")
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
        return _save(figure, path)


def _number(metrics: dict, key: str) -> float | None:
    """The metric as a float, or None where it is absent or not finite."""
    value = metrics.get(key)
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None


# The families whose consistency the measures-against-accuracy figure shows: the first present.
_CONSISTENCY_FAMILIES = ("shift", "circular_shift", "rotation", "rot90")


def accuracy_points(
    approaches: list[Approach], value: Callable[[Approach], float | None]
) -> list[tuple[str, float, float]]:
    """(approach, test accuracy in %, ``value(approach)``) of each approach that has both: the
    accuracy is the mean over its runs that have one.

    Examples:
        >>> from symtrain.report.collect import Run
        >>> def approach(name, **metrics):
        ...     return Approach(name, [Run(Path(name), {"metrics": metrics})])
        >>> runs = [approach("a", **{"test/acc": 0.5, "x": 2.0}), approach("b", x=3.0), approach("c")]
        >>> accuracy_points(runs, lambda a: a.mean("x"))
        [('a', 50.0, 2.0)]
    """
    points = []
    for approach in approaches:
        accuracy, measured = approach.mean("test/acc"), value(approach)
        if accuracy is not None and measured is not None and np.isfinite(measured):
            points.append((approach.name, accuracy * 100, float(measured)))
    return points


def _lie_panel(approaches: list[Approach]) -> tuple[str, list[tuple[str, float, float]]] | None:
    """The mean Lie derivative over the generators that every approach with an accuracy and a
    Lie derivative has (so that each point averages the same generators)."""
    measured = [
        a for a in approaches if a.values("test/acc") and any(a.values(f"test/lie/{g}") for g in _GENERATORS)
    ]
    generators = [g for g in _GENERATORS if measured and all(a.values(f"test/lie/{g}") for a in measured)]
    if not generators:
        return None

    def mean_lie(approach: Approach) -> float | None:
        means = [approach.mean(f"test/lie/{g}") for g in generators]
        return None if None in means else float(np.mean(means))

    label = "mean |L_X f| over generators\n(" + textwrap.fill(", ".join(generators), 42) + ")"
    return label, accuracy_points(approaches, mean_lie)


def _consistency_panel(approaches: list[Approach]) -> tuple[str, list[tuple[str, float, float]]] | None:
    """Consistency (%) under the first of :data:`_CONSISTENCY_FAMILIES` with two points or more."""
    for family in _CONSISTENCY_FAMILIES:
        key = f"test/equiv/{family}/consistency"
        points = accuracy_points(approaches, lambda a, key=key: a.mean(key))
        if len(points) >= 2:
            return f"consistency under {family} (%)", [(n, acc, v * 100) for n, acc, v in points]
    return None


def accuracy_panels(approaches: list[Approach]) -> list[tuple[str, list[tuple[str, float, float]], bool]]:
    """The panels of :func:`measures_against_accuracy`: (y label, points as
    :func:`accuracy_points` gives them, whether the y axis is logarithmic) of each measure that
    two approaches or more have together with an accuracy, in the order Lie derivative,
    consistency, R_f."""
    r_f = accuracy_points(approaches, lambda a: a.mean("test/diffeo/R_f"))
    candidates = [
        (_lie_panel(approaches), True),
        (_consistency_panel(approaches), False),
        (("R_f (relative stability to diffeomorphisms)", r_f), True),
    ]
    return [(*panel, log) for panel, log in candidates if panel is not None and len(panel[1]) >= 2]


def measures_against_accuracy(approaches: list[Approach], task: Task, path: Path) -> Path | None:
    """Invariance measures against test accuracy, one point per approach (the mean over its
    runs), as Gruver et al. 2022 (Fig. 1 and 4) plot the Lie derivative of many ImageNet models
    against their top-1 accuracy: up to three panels, the mean Lie derivative over the
    generators measured, the consistency under the first shift or rotation family measured, and
    R_f. A panel needs two approaches with both an accuracy and its value; approaches without an
    accuracy (measured label-free) are left out.

    Returns:
        ``path``, or None without a panel (and for segmentation runs).
    """
    panels = accuracy_panels(approaches) if task.name == "classification" else []
    if not panels:
        return None
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {a.name: colours[i % len(colours)] for i, a in enumerate(approaches)}
    with plt.rc_context(_STYLE):
        figure, axes = _panels(len(panels), width=3.6)
        for ax, (label, points, log) in zip(axes, panels, strict=True):
            for name, accuracy, value in points:
                ax.scatter(accuracy, value, s=90, zorder=3, color=colour[name], label=name)
                ax.annotate(name, (accuracy, value), xytext=(4, 3), textcoords="offset points", fontsize=7)
            if log:
                values = [value for _, _, value in points]
                if min(values) > 0:
                    ax.set_yscale("log")
                else:  # an exactly invariant model measures 0: linear around it
                    ax.set_yscale("symlog", linthresh=min([v for v in values if v > 0] or [1e-6]))
            ax.margins(x=0.1, y=0.12)
            low, high = ax.get_xlim()
            ax.set_xlim(low, high + 0.3 * (high - low))  # room for the labels right of the points
            ax.set_xlabel("test accuracy (%)")
            ax.set_ylabel(label, fontsize=8)
        shown = {name: None for _, points, _ in panels for name, _, _ in points}
        if len(shown) <= 10:  # more would hide the panels: the points are labelled anyway
            handles = [
                plt.Line2D([], [], marker="o", markersize=9, linestyle="", color=colour[name], label=name)
                for name in shown
            ]
            axes[-1].legend(
                handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False
            )
        return _save(figure, path)


def _any(approaches: list[Approach], key: str) -> bool:
    return any(approach.values(key) for approach in approaches)


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
    """Test images of the run's own data (a seeded, class-stratified few), rebuilt from its
    config.yaml."""
    data = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    module_name, _, class_name = data["class_path"].rpartition(".")
    datamodule = getattr(importlib.import_module(module_name), class_name)(**data.get("init_args", {}))
    datamodule.setup("test")
    split = datamodule.splits["test"]
    names = list(getattr(datamodule, "class_names", None) or range(int(split.labels.max()) + 1))
    shown = split.sample(count, seed=0)  # one image per class where it can (decoded if streamed)
    return shown.images.float() / 255, shown.labels, [str(n) for n in names]


def examples(approaches: list[Approach], path: Path, count: int = 4) -> tuple[Path | None, str | None]:
    """Test images under each view, with each approach's predicted class (green: right).

    Uses the first run of each approach that has a checkpoint, and the data of the first of
    them, rebuilt from its config; approaches measured, not trained here (no checkpoint), are
    left out, and the note names them.

    Returns:
        (``path``, None or a note naming the approaches left out), or (None, a note saying why
        the figure was left out).
    """
    from symtrain.runs import load_model

    loadable = [a for a in approaches if a.runs[0].has_checkpoint]
    unloadable = ", ".join(a.name for a in approaches if not a.runs[0].has_checkpoint)
    if not loadable:
        return None, f"examples left out: no checkpoint to load ({unloadable}: measured, not trained here)"
    skipped = (
        f"examples leave out {unloadable}: measured, not trained here (no checkpoint)" if unloadable else None
    )
    try:
        images, labels, names = _test_images(loadable[0].runs[0].path, count)
    except Exception as error:  # e.g. a download dataset that is not on this machine
        return None, f"examples left out: the data could not be rebuilt ({type(error).__name__}: {error})"
    predictions = {}
    with torch.no_grad():
        for approach in loadable:
            try:
                net = load_model(approach.runs[0].path)
            except Exception as error:  # e.g. checkpoints deleted to save space: the tables still stand
                return None, f"examples left out: {approach.runs[0].path} could not be loaded ({error})"
            predictions[approach.name] = [net(view(images)).argmax(1) for _, view in _VIEWS]
    with plt.rc_context({"figure.dpi": 110}):
        figure, axes = plt.subplots(
            len(images),
            len(_VIEWS),
            figsize=(2.9 * len(_VIEWS), (1.6 + 0.17 * len(loadable)) * len(images)),
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
        return path, skipped
