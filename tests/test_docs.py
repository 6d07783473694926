"""The manual and the README: the site builds strictly, renders offline in a browser, and every
code block on every page runs.

What "runs" means for each kind of fenced block (a fence of any other kind fails the suite):

- ``python``: a page's blocks run in order as one script, in a scratch directory that holds the
  repository's ``configs/`` and ``data/`` and a finished quickstart run at ``runs/quickstart``;
- ``bash``: a ``fit``, ``validate``, ``test`` or ``predict`` of the finished run's own config
  (``--config runs/quickstart/config.yaml``) runs for real; every other command is checked without
  doing the job it starts: ``python -m symtrain`` with ``fit``, ``validate``, ``test``,
  ``predict``, ``compare`` or ``measure`` parses its whole config (``--print_config``: every file,
  class path, flag and value), ``report`` and ``data`` parse their
  options, ``make TARGET`` names a target of the Makefile (``make -n``), and ``python -m pytest``
  selects at least one test (``--collect-only``);
- ``yaml`` and ``json``: parse; ``text``: output and pictures of files, shown as they are.

pytest-markdown-docs runs Python fences one by one from where pytest runs; the pages here mix
Python with commands and need one scratch directory per page, so the few lines below do it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from browser import render

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
KINDS = {"python", "bash", "yaml", "json", "text"}
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S
)
RUN_CONFIG = "--config runs/quickstart/config.yaml"  # the scratch directory's finished run
LIGHTNING = {"fit", "validate", "test", "predict", "compare", "measure"}
ENV = dict(os.environ, NO_MKDOCS_2_WARNING="1", DISABLE_MKDOCS_2_WARNING="true")


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def fences(page: Path) -> list[tuple[str, str]]:
    """(kind, text) of every fenced block of a page, in order, dedented to the fence's indent."""
    out = []
    for match in FENCE.finditer(page.read_text()):
        indent = len(match["indent"])
        body = "\n".join(line[indent:] for line in match["body"].splitlines())
        out.append((match["info"].split()[0] if match["info"].strip() else "", body))
    return out


def commands(script: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped."""
    return [
        argv
        for line in script.replace("\\\n", " ").splitlines()
        if (argv := shlex.split(line, comments=True))
    ]


def with_kind(*kinds: str) -> list[Path]:
    return [page for page in PAGES if any(k in kinds for k, _ in fences(page))]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory like a fresh clone after ``make demo``: configs, the real digits and a short
    quickstart run at ``runs/quickstart`` (what the pages' commands refer to)."""
    path = tmp_path_factory.mktemp("docs")
    for name in ("configs", "data", "scripts", "tests", "Makefile", "pyproject.toml"):
        (path / name).symlink_to(ROOT / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "symtrain",
            "fit",
            "--config",
            "configs/quickstart.yaml",
            "--run.name",
            "quickstart",
            "--run.quiet",
            "true",
            "--run.wandb",
            "false",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.limit_test_batches",
            "1",
            "--metrics.measures",
            "[acc]",
        ],
        cwd=path,
        env=dict(ENV, PYTHONPATH=str(ROOT)),
        check=True,
        capture_output=True,
    )
    return path


def test_every_fence_is_of_a_kind_the_suite_checks() -> None:
    unknown = {(page_id(page), kind) for page in PAGES for kind, _ in fences(page) if kind not in KINDS}
    assert not unknown, f"fences the suite does not run (use one of {sorted(KINDS)}): {sorted(unknown)}"


@pytest.mark.parametrize("page", with_kind("yaml", "json"), ids=page_id)
def test_every_yaml_and_json_block_parses(page: Path) -> None:
    for kind, body in fences(page):
        if kind == "yaml":
            yaml.safe_load(body)
        elif kind == "json":
            json.loads(body)


def check_command(argv: list[str], cwd: Path) -> None:
    """Parse one documented command as described in the module docstring, or fail naming it."""
    shown = shlex.join(argv)
    if argv[0] == "make":
        done = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, f"{shown}: {done.stderr}"
        return
    program = argv[:3]
    assert Path(argv[0]).name.startswith("python") and argv[1] == "-m", (
        f"not a command the suite checks: {shown}"
    )
    if program[2] == "pytest":
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *argv[3:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, f"{shown} selects no test: {done.stdout[-2000:]}"
        return
    assert program[2] in ("symtrain", "scripts.benchmark"), f"not a command the suite checks: {shown}"
    sub, args = (argv[3], argv[4:]) if program[2] == "symtrain" else ("benchmark", argv[3:])
    if sub in LIGHTNING and RUN_CONFIG in shlex.join(args):
        # The finished run's own config: as short as that run, so the command runs for real.
        done = subprocess.run(
            [sys.executable, "-m", "symtrain", *argv[3:]],
            cwd=cwd,
            env=dict(ENV, PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{shown}: {done.stderr[-2000:]}"
        return
    with (
        contextlib.chdir(cwd),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()) as err,
    ):
        try:
            if sub == "benchmark":
                from scripts.benchmark.cli import build_parser

                build_parser().parse_args(args)
            elif sub in LIGHTNING:
                from symtrain.__main__ import main

                main([sub, *args, "--print_config"])
            elif sub == "report":
                from symtrain.compare import report_parser

                report_parser().parse_args(args)
            elif sub == "data":
                from symtrain.data.commands import parser as data_parser

                data_parser().parse_args(args)
            else:
                raise AssertionError(f"no such subcommand: {shown}")
        except SystemExit as stop:
            assert stop.code in (0, None), f"{shown}: {err.getvalue().strip()}"
        except Exception as error:  # a parser that raises instead of exiting (exit_on_error=False)
            raise AssertionError(f"{shown}: {error}") from error


@pytest.mark.slow
@pytest.mark.parametrize("page", with_kind("bash"), ids=page_id)
def test_every_shell_command_in_the_docs_parses(page: Path, scratch: Path) -> None:
    argvs = [argv for kind, body in fences(page) if kind == "bash" for argv in commands(body)]
    assert argvs
    for argv in argvs:
        check_command(argv, scratch)


@pytest.mark.slow
@pytest.mark.parametrize("page", with_kind("python"), ids=page_id)
def test_every_python_block_in_the_docs_runs(page: Path, scratch: Path) -> None:
    script = "\n\n".join(body for kind, body in fences(page) if kind == "python")
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=scratch,
        env=dict(ENV, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{page_id(page)}:\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.mark.slow
def test_the_manual_builds_strictly_with_math_and_every_module(site: Path) -> None:
    measure = (site / "measures" / "invariance-error.html").read_text()
    assert "<math" in measure and "arithmatex" not in measure  # rendered at build time
    modules = {p.stem for p in (site / "reference" / "api").glob("symtrain*.html")}
    assert {"symtrain.metrics.lie", "symtrain.transforms", "symtrain.module"} <= modules
    fetched = re.compile(r"""<(script|link|img|iframe)\b[^>]*\b(src|href)=["']?(https?:)?//""")
    for page in site.rglob("*.html"):
        assert not fetched.search(page.read_text()), f"{page} fetches from the network when viewed"


@pytest.mark.slow
@pytest.mark.parametrize(
    "page, expected",
    [
        ("index.html", "symtrain"),
        ("measures/invariance-error.html", "<math"),
        ("reference/api/symtrain.metrics.measuring.html", "measure"),
    ],
)
def test_the_pages_render_in_headless_chromium_without_console_errors(
    site: Path, page: str, expected: str, tmp_path: Path
) -> None:
    screenshot = tmp_path / "page.png"
    dom = render((site / page).resolve().as_uri(), screenshot, window=(1200, 2000))
    assert expected in dom and 'class="md-content"' in dom
    assert dom.count('class="md-nav__link') > 10  # the navigation was drawn
    from PIL import Image

    pixels = Image.open(screenshot).convert("L")
    assert pixels.getextrema()[0] < 80, "the page drew no text"


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        "python -m symtrain fit --config configs/quickstart.yaml --model.backbone.widht 3",
        "python -m symtrain fit --config configs/no_such_file.yaml",
        "python -m symtrain fit --config runs/quickstart/config.yaml --ckpt_path last --trainer.max_epochs 9",
        "python -m symtrain compare --config configs/compare/shapes.yaml --seedz [1]",
        "python -m symtrain report --outt x runs/quickstart",
        "make no_such_target",
        "python -m scripts.benchmark --sections nonsense --quikc",
        "wandb leet runs/wandb",
    ],
)
def test_the_command_check_fails_a_command_that_would_not_work(command: str, scratch: Path) -> None:
    with pytest.raises(AssertionError):
        check_command(shlex.split(command), scratch)


def test_the_readme_is_a_short_front_door_whose_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert targets
    missing = [t for t in targets if not t.startswith("http") and not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
