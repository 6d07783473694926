"""The report as text: tables, definitions, and the HTML and Markdown pages around the figures."""

from __future__ import annotations

import base64
import html
from datetime import datetime
from pathlib import Path

from symtrain.report.collect import Approach, mean_std

DEFINITIONS = [
    ("accuracy", "share of test images classified correctly, upright (the plain test split)."),
    (
        "accuracy under a family",
        "accuracy on the test images after a random element of the family "
        "(e.g. a rotation by a multiple of 90°) is applied to each image.",
    ),
    (
        "invariance error",
        "‖f(g·x) − f(x)‖ / ‖f(x)‖ on the logits, averaged over images and elements g: "
        "0 for a model whose output does not change under the family.",
    ),
    ("consistency", "share of images whose predicted class is the same for x and g·x (higher is better)."),
    (
        "layer-wise equivariance error",
        "‖Φ(g·x) − g·Φ(x)‖ / ‖Φ(x)‖ for each stage's feature map Φ, where g acts "
        "on the map as the network declares (spatially, and on escnn's field types): 0 means that stage is "
        "exactly equivariant.",
    ),
    (
        "error floor",
        "the invariance error an exactly rot90-invariant reference shows under interpolated "
        "rotations: the part of the error that comes from resampling the pixel grid, not from the model.",
    ),
    (
        "families",
        "rot90: rotations by multiples of 90° (exact on the grid); flip: horizontal/vertical flips; "
        "circular_shift: integer shifts that wrap around (exact); shift: shifts with zero fill; "
        "rotation: any angle (interpolated, inside a disk).",
    ),
]


def _cell(approach: Approach, key: str, scale: float = 1.0, digits: int = 1) -> str:
    stats = mean_std(approach.values(key))
    if stats is None:
        return ""
    mean, std = stats[0] * scale, stats[1] * scale
    text = f"{mean:.{digits}f}" if abs(mean) >= 10**-digits or mean == 0 else f"{mean:.1e}"
    return f"{text} ± {std:.{digits}f}" if len(approach.runs) > 1 else text


def tables(approaches: list[Approach], families: list[str]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(caption, header, rows) of the report's tables: one row per approach."""
    first = ["approach", "seeds"]
    names = [[a.name, str(len(a.runs))] for a in approaches]
    accuracy = (
        "Test accuracy (%), upright and under each family; parameters and training time",
        [*first, "upright", *families, "params", "fit (s)"],
        [
            [
                *n,
                _cell(a, "test/acc", 100),
                *(_cell(a, f"test/equiv/{f}/acc", 100) for f in families),
                f"{int(a.values('params')[0]):,}",
                _cell(a, "fit_seconds", digits=0) or "n/a",
            ]
            for n, a in zip(names, approaches, strict=True)
        ],
    )
    error = (
        "Invariance error of the logits (relative; 0 = invariant)",
        [*first, *families],
        [
            [*n, *(_cell(a, f"test/equiv/{f}/invariance_error", digits=3) for f in families)]
            for n, a in zip(names, approaches, strict=True)
        ],
    )
    consistency = (
        "Consistency (%): predicted class unchanged under the family",
        [*first, *families],
        [
            [*n, *(_cell(a, f"test/equiv/{f}/consistency", 100) for f in families)]
            for n, a in zip(names, approaches, strict=True)
        ],
    )
    return [accuracy, error, consistency]


def markdown(
    title: str,
    approaches: list[Approach],
    families: list[str],
    figures: list[tuple[str, Path]],
    notes: list[str],
) -> str:
    lines = [
        f"# {title}",
        "",
        f"{sum(len(a.runs) for a in approaches)} runs, {datetime.now():%Y-%m-%d %H:%M}.",
        "",
    ]
    for caption, header, rows in tables(approaches, families):
        lines += [f"**{caption}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    for caption, path in figures:
        lines += [f"![{caption}](figures/{path.name})", "", f"*{caption}*", ""]
    lines += ["## Definitions", ""] + [f"- **{term}**: {text}" for term, text in DEFINITIONS] + [""]
    lines += ["## Runs", ""] + [
        f"- {a.name}: " + ", ".join(f"`{r.path}`" for r in a.runs) for a in approaches
    ]
    return "\n".join(lines + [""] + [f"> {note}" for note in notes]) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.92em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
.note { color: #8a5300; } code { font-size: 0.9em; }
"""


def html_page(
    title: str,
    approaches: list[Approach],
    families: list[str],
    figures: list[tuple[str, Path]],
    notes: list[str],
) -> str:
    """A self-contained page: inline CSS, figures as data URIs, no scripts, no external URLs."""
    e = html.escape
    runs = sum(len(a.runs) for a in approaches)
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>{runs} runs of {len(approaches)} approaches, {datetime.now():%Y-%m-%d %H:%M}.</p>",
    ]
    parts += [f"<p class='note'>{e(note)}</p>" for note in notes]
    for caption, header, rows in tables(approaches, families):
        parts.append(
            f"<table><caption>{e(caption)}</caption><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in header)
            + "</tr>"
        )
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    for caption, path in figures:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(
            f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{e(caption)}</figcaption></figure>"
        )
    parts.append("<h2>Definitions</h2><dl>")
    parts += [f"<dt><b>{e(term)}</b></dt><dd>{e(text)}</dd>" for term, text in DEFINITIONS]
    parts.append("</dl><h2>Runs</h2><ul>")
    parts += [
        f"<li>{e(a.name)}: " + ", ".join(f"<code>{e(str(r.path))}</code>" for r in a.runs) + "</li>"
        for a in approaches
    ]
    return "\n".join(parts + ["</ul></body></html>"]) + "\n"
