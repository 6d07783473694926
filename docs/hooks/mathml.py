"""Render the manual's math to MathML when the site is built.

``pymdownx.arithmatex`` (generic mode) marks the math of a page as ``\\(...\\)`` and ``\\[...\\]``
spans; this hook turns each into MathML with latex2mathml, which browsers draw natively. The
usual route, MathJax or KaTeX loaded by the page, fetches a script from a CDN when the page is
viewed; the manual has to render offline, and no MkDocs plugin renders math at build time.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

_MATH = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*\\(?P<open>[(\[])(?P<tex>.*?)\\[)\]]\s*</(?P=tag)>',
    re.DOTALL,
)


def _mathml(match: re.Match[str]) -> str:
    tex = html.unescape(match["tex"]).strip()
    display = "block" if match["open"] == "[" else "inline"
    return convert(tex, display=display)


def on_page_content(content: str, **_: object) -> str:
    """Replace every math span of a page's HTML by its MathML."""
    return _MATH.sub(_mathml, content)
