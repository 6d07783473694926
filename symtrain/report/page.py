"""The report as text: tables, definitions, and the HTML and Markdown pages around the figures."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from symtrain.report.collect import Approach, Failure, Task, families, mean_std, measures_of
from symtrain.transforms import families_by_name

_UPRIGHT = {
    "classification": ("accuracy (upright)", "share of the test split classified correctly, as is."),
    "segmentation": (
        "mIoU (upright)",
        "mean over the classes, background included, of the intersection over union of the "
        "predicted and the true masks of the test split, as is.",
    ),
}
_SUBSET = (
    "measured subset",
    "the measures read a seeded, class-stratified subset of the test split, the same on every run "
    "of the same data.",
)


def definitions(approaches: list[Approach], task: Task) -> list[tuple[str, str]]:
    """(term, definition) of the report's numbers: each measure's own definition, as the runs
    recorded it."""
    measured = [(m["title"], m["definition"]) for m in measures_of(approaches, task)]
    known = families_by_name()
    described = [
        (f"family {name}", known[name].definition()) for name in families(approaches) if name in known
    ]
    return [_UPRIGHT[task.name], *measured, _SUBSET, *described]


def _scientific(value: float, digits: int) -> bool:
    """Whether ``value`` would read as 0 with ``digits`` decimals (exact invariance shows as 1e-7).

    Examples:
        >>> _scientific(3.4e-07, 3), _scientific(0.0, 3), _scientific(0.25, 3)
        (True, False, False)
    """
    return value != 0 and abs(value) < 10**-digits


def _cell(approach: Approach, key: str, scale: float = 1.0, digits: int = 1) -> str:
    """Mean ± std over the approach's seeds (the mean alone for one seed); blank where not measured.

    The std is written like its mean, so that a column reads at one precision.
    """
    stats = mean_std(approach.values(key))
    if stats is None:
        return ""
    mean, std = stats[0] * scale, stats[1] * scale
    form = ".1e" if _scientific(mean, digits) else f".{digits}f"
    return f"{mean:{form}} ± {std:{form}}" if len(approach.runs) > 1 else f"{mean:{form}}"


class Spanning(str):
    """A cell that fills the rest of its row: a failed model's reason in place of its numbers.

    Examples:
        >>> _markdown_row(["resnet", "", Spanning("failed: no weights")], 5)
        '| resnet |  | failed: no weights |  |  |'
        >>> _html_row(["resnet", "", Spanning("failed: no weights")], 5)
        "<tr><td>resnet</td><td></td><td colspan='3' class='failed'>failed: no weights</td></tr>"
    """


def _markdown_row(row: list[str], width: int) -> str:
    """A table row in Markdown: a spanning cell is followed by empty ones up to the header's width
    (a ``|`` in a cell, e.g. in a failure's reason, is escaped)."""
    return "| " + " | ".join([*(c.replace("|", "\\|") for c in row), *[""] * (width - len(row))]) + " |"


def _html_row(row: list[str], width: int) -> str:
    cells = [
        f"<td colspan='{width - i}' class='failed'>{html.escape(c)}</td>"
        if isinstance(c, Spanning)
        else f"<td>{html.escape(c)}</td>"
        for i, c in enumerate(row)
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def _upright(approach: Approach, task: Task) -> str:
    """The upright score, or n/a for runs without one (measured label-free: the notes say why)."""
    return _cell(approach, f"test/{task.score}", 100) or "n/a"


def tables(
    approaches: list[Approach], families: list[str], task: Task, failed: Sequence[Failure] = ()
) -> list[tuple[str, list[str], list[list[str]]]]:
    """(caption, header, rows) of the report's tables: one row per approach, and in the first
    one row per failed model, its reason (a :class:`Spanning` cell) in place of its numbers."""
    first = ["approach", "seeds"]
    names = [[a.name, str(len(a.runs))] for a in approaches]
    accuracy = (
        f"Test {task.score_label} (%), upright and under each family; the base training pipeline "
        "(crops, and flips when not left to a strategy), the training recipe (optimizer, learning "
        "rate, schedule, weight averaging), parameters and training time",
        [*first, "upright", *families, "base pipeline", "recipe", "params", "fit (s)"],
        [
            [
                *n,
                _upright(a, task),
                *(_cell(a, f"test/equiv/{f}/{task.score}", 100) for f in families),
                a.base_pipeline,
                a.recipe,
                f"{int(a.values('params')[0]):,}" if a.values("params") else "",
                _cell(a, "fit_seconds", digits=0) or "n/a",
            ]
            for n, a in zip(names, approaches, strict=True)
        ]
        + [[f.model, "", Spanning(f"failed: {f.reason}")] for f in _distinct(failed)],
    )
    measured = []
    for m in measures_of(approaches, task):
        if not m["table"]:
            continue
        # a measure of no family names its own columns; the others have one per family
        columns = m.get("columns") or {f: f"equiv/{f}/{m['key']}" for f in families}
        rows = [
            [*n, *(_cell(a, f"test/{key}", m["scale"], m["digits"]) for key in columns.values())]
            for n, a in zip(names, approaches, strict=True)
        ]
        measured.append((m["caption"], [*first, *columns], rows))
    # a measure some families do not have (the round trip) shows only the families that do
    shown = []
    for caption, header, rows in measured:
        keep = [i for i in range(len(header)) if i < len(first) or any(row[i] for row in rows)]
        shown.append((caption, [header[i] for i in keep], [[row[i] for i in keep] for row in rows]))
    return [accuracy, *shown]


def _distinct(failed: Sequence[Failure]) -> list[Failure]:
    """One failure per model and reason (a model that failed for every seed is one row)."""
    return list({(f.model, f.reason): f for f in failed}.values())


def failure_notes(failed: Sequence[Failure]) -> list[str]:
    """A note line per failed model: ``failed: <model> (<reason>)``."""
    return [f"failed: {f.model} ({f.reason})" for f in _distinct(failed)]


def _counts(approaches: list[Approach], failed: Sequence[Failure]) -> str:
    runs = sum(len(a.runs) for a in approaches)
    return f"{runs} runs of {len(approaches)} approaches" + (f", {len(failed)} failed" if failed else "")


def _run_list(
    approaches: list[Approach],
    failed: Sequence[Failure],
    text: Callable[[str], str],
    code: Callable[[str], str],
) -> list[str]:
    """The Runs section's items: each approach's run directories (and where a measured model came
    from), then each failed run's; ``text`` and ``code`` write plain text and paths."""
    items = [
        text(f"{a.name}: ")
        + ", ".join(code(str(r.path)) for r in a.runs)
        + (text(f" (measured: {a.measured_from})") if a.measured_from else "")
        for a in approaches
    ]
    return items + [text(f"{f.model}: failed, ") + code(str(f.path)) for f in failed]


def markdown(
    title: str,
    approaches: list[Approach],
    families: list[str],
    figures: list[tuple[str, Path]],
    notes: list[str],
    task: Task,
    failed: Sequence[Failure] = (),
) -> str:
    """The report as Markdown, with the figures linked from ``figures/``."""
    lines = [
        f"# {title}",
        "",
        f"{_counts(approaches, failed)}, {datetime.now():%Y-%m-%d %H:%M}.",
        "",
    ]
    for caption, header, rows in tables(approaches, families, task, failed):
        lines += [f"**{caption}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += [_markdown_row(row, len(header)) for row in rows] + [""]
    for caption, path in figures:
        lines += [f"![{caption}](figures/{path.name})", "", f"*{caption}*", ""]
    lines += (
        ["## Definitions", ""]
        + [f"- **{term}**: {text}" for term, text in definitions(approaches, task)]
        + [""]
    )
    items = _run_list(approaches, failed, lambda t: t, lambda p: f"`{p}`")
    lines += ["## Runs", ""] + [f"- {item}" for item in items]
    return "\n".join(lines + [""] + [f"> {note}\n" for note in notes]).rstrip("\n") + "\n"  # a quote each


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5em 0 1.8em; font-size: 0.92em;
        font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.4em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
td.failed { text-align: left; white-space: normal; color: #a12; }
.note { color: #8a5300; } code { font-size: 0.9em; }
"""


def html_page(
    title: str,
    approaches: list[Approach],
    families: list[str],
    figures: list[tuple[str, Path]],
    notes: list[str],
    task: Task,
    failed: Sequence[Failure] = (),
) -> str:
    """A self-contained page: inline CSS, figures as data URIs, no scripts, no external URLs."""
    e = html.escape
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>{e(_counts(approaches, failed))}, {datetime.now():%Y-%m-%d %H:%M}.</p>",
    ]
    parts += [f"<p class='note'>{e(note)}</p>" for note in notes]
    for caption, header, rows in tables(approaches, families, task, failed):
        parts.append(
            f"<table><caption>{e(caption)}</caption><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in header)
            + "</tr>"
        )
        parts += [_html_row(row, len(header)) for row in rows]
        parts.append("</table>")
    for caption, path in figures:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(
            f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{e(caption)}</figcaption></figure>"
        )
    parts.append("<h2>Definitions</h2><dl>")
    parts += [f"<dt><b>{e(term)}</b></dt><dd>{e(text)}</dd>" for term, text in definitions(approaches, task)]
    parts.append("</dl><h2>Runs</h2><ul>")
    parts += [
        f"<li>{item}</li>" for item in _run_list(approaches, failed, e, lambda p: f"<code>{e(p)}</code>")
    ]
    return "\n".join(parts + ["</ul></body></html>"]) + "\n"
