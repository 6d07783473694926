"""The report as text: tables, definitions, and the HTML and Markdown pages around the figures."""

from __future__ import annotations

import base64
import html
from datetime import datetime
from pathlib import Path

from symtrain.report.collect import Approach, Task, mean_std

CLASSIFICATION_DEFINITIONS = [
    ("accuracy (upright)", "share of the test split classified correctly, as is."),
    (
        "accuracy under a family",
        "accuracy on a fixed subset of test images after each of the family's three fixed, seeded "
        "test elements g (never the identity) is applied, averaged over images and elements.",
    ),
    (
        "invariance error",
        "‖f(g·x) − f(x)‖ / ‖f(x)‖ on the logits f, per image, averaged over images and the test "
        "elements: 0 when the output does not change under the family, about 1 when the change is "
        "as large as the output itself.",
    ),
    (
        "consistency",
        "share of images whose predicted class agrees between consecutive views "
        "(x, g₁·x, g₂·x, g₃·x), averaged over the pairs: 100% when no element changes the prediction.",
    ),
    (
        "layer-wise equivariance error",
        "‖Φ(g·x) − g·Φ(x)‖ / ‖Φ(x)‖ for each stage's feature map Φ, with an element g that acts "
        "exactly on that stage's grid and as the backbone declares (a permutation of cells, and of "
        "escnn's field channels); 'invariant' is escnn's group-pooled feature map. Only exact families "
        "are measured; 0 means that stage is exactly equivariant.",
    ),
    (
        "error floor",
        "for interpolated rotations, the invariance error of the radial intensity profile (exactly "
        "rotation-invariant in the continuum) under the same rotations: what resampling the pixel "
        "grid alone costs, below which an error is not the model's fault.",
    ),
    (
        "families",
        "rot90: rotations by multiples of 90° (exact on the grid); flip: mirror images (exact); "
        "circular_shift: integer shifts that wrap around (exact); shift: integer shifts with zero "
        "fill (content leaves the frame); rotation: any angle, bilinear (interpolated); affine and "
        "elastic: random warps. Non-exact families are measured on images masked to the inscribed "
        "disk, so that the corners leaving the frame do not count.",
    ),
    (
        "curves",
        "accuracy against rotation angle: disk-masked test images rotated by each angle; accuracy "
        "against shift: images shifted right by each number of pixels, zero fill.",
    ),
]
_LAYERWISE, _FAMILIES = CLASSIFICATION_DEFINITIONS[4], CLASSIFICATION_DEFINITIONS[6]
SEGMENTATION_DEFINITIONS = [
    (
        "mIoU (upright)",
        "mean over the classes, background included, of the intersection over union of the "
        "predicted and the true masks of the test split, as is.",
    ),
    (
        "mIoU under a family",
        "mIoU of f(g·x) against the moved masks g·y on a fixed subset of test images, for each of "
        "the family's three fixed, seeded test elements g, counted on the region both views see "
        "(inside the frame, and inside the inscribed disk for non-exact families).",
    ),
    (
        "equivariance error",
        "‖f(g·x) − g·f(x)‖ / ‖f(x)‖ on the per-pixel logits f, on that region, per image, averaged "
        "over images and elements: 0 when the output moves exactly with the image.",
    ),
    (
        "mask consistency",
        "share of the pixels of that region whose predicted class agrees between f(g·x) and g·f(x) "
        "(the prediction for the moved image, and the moved prediction): 100% when the predicted "
        "mask follows the transformation.",
    ),
    _LAYERWISE,
    (
        "error floor",
        "for interpolated rotations, the equivariance error of an isotropic gaussian blur (exactly "
        "rotation-equivariant in the continuum) under the same rotations: what resampling the pixel "
        "grid alone costs.",
    ),
    _FAMILIES,
    (
        "curves",
        "mIoU against rotation angle: disk-masked test images and their masks rotated by each angle; "
        "against shift: shifted right by each number of pixels, zero fill; on the region both see.",
    ),
]
DEFINITIONS = {"classification": CLASSIFICATION_DEFINITIONS, "segmentation": SEGMENTATION_DEFINITIONS}


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


def tables(
    approaches: list[Approach], families: list[str], task: Task
) -> list[tuple[str, list[str], list[list[str]]]]:
    """(caption, header, rows) of the report's tables: one row per approach."""
    first = ["approach", "seeds"]
    names = [[a.name, str(len(a.runs))] for a in approaches]
    accuracy = (
        f"Test {task.score_label} (%), upright and under each family; parameters and training time",
        [*first, "upright", *families, "params", "fit (s)"],
        [
            [
                *n,
                _cell(a, f"test/{task.score}", 100),
                *(_cell(a, f"test/equiv/{f}/{task.score}", 100) for f in families),
                f"{int(a.values('params')[0]):,}" if a.values("params") else "",
                _cell(a, "fit_seconds", digits=0) or "n/a",
            ]
            for n, a in zip(names, approaches, strict=True)
        ],
    )
    # Interpolated families also have the error floor that resampling alone causes.
    floors = [f for f in families if any(a.values(f"test/equiv/{f}/error_floor") for a in approaches)]
    error = (
        task.error_caption,
        [*first, *families, *(f"{f} floor" for f in floors)],
        [
            [
                *n,
                *(_cell(a, f"test/equiv/{f}/{task.error}", digits=3) for f in families),
                *(_cell(a, f"test/equiv/{f}/error_floor", digits=3) for f in floors),
            ]
            for n, a in zip(names, approaches, strict=True)
        ],
    )
    consistency = (
        task.consistency_caption,
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
    task: Task,
) -> str:
    """The report as Markdown, with the figures linked from ``figures/``."""
    lines = [
        f"# {title}",
        "",
        f"{sum(len(a.runs) for a in approaches)} runs, {datetime.now():%Y-%m-%d %H:%M}.",
        "",
    ]
    for caption, header, rows in tables(approaches, families, task):
        lines += [f"**{caption}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    for caption, path in figures:
        lines += [f"![{caption}](figures/{path.name})", "", f"*{caption}*", ""]
    lines += (
        ["## Definitions", ""] + [f"- **{term}**: {text}" for term, text in DEFINITIONS[task.name]] + [""]
    )
    lines += ["## Runs", ""] + [
        f"- {a.name}: " + ", ".join(f"`{r.path}`" for r in a.runs) for a in approaches
    ]
    return "\n".join(lines + [""] + [f"> {note}" for note in notes]) + "\n"


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
.note { color: #8a5300; } code { font-size: 0.9em; }
"""


def html_page(
    title: str,
    approaches: list[Approach],
    families: list[str],
    figures: list[tuple[str, Path]],
    notes: list[str],
    task: Task,
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
    for caption, header, rows in tables(approaches, families, task):
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
    parts += [f"<dt><b>{e(term)}</b></dt><dd>{e(text)}</dd>" for term, text in DEFINITIONS[task.name]]
    parts.append("</dl><h2>Runs</h2><ul>")
    parts += [
        f"<li>{e(a.name)}: " + ", ".join(f"<code>{e(str(r.path))}</code>" for r in a.runs) + "</li>"
        for a in approaches
    ]
    return "\n".join(parts + ["</ul></body></html>"]) + "\n"
