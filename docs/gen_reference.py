"""Generate the reference pages when the manual is built (run by the mkdocs-gen-files plugin).

- ``reference/api/*.md``: one page per public module of ``symtrain``, rendered by mkdocstrings
  from its docstrings, and an index of them;
- ``reference/configs.md``: every file under ``configs/``, described by its own leading comment;
- ``reference/cli.md``: the ``--help`` of every subcommand, as the installed CLI prints it.

Generated, not written, so that none of them can drift from the code.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "symtrain"


def public_modules() -> list[str]:
    """Dotted names of every module of the package without a leading underscore in its path."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") for part in parts) or parts[-1] == "__main__":
            continue
        names.append(".".join(parts))
    return names


def first_line(module: str) -> str:
    """The first line of a module's docstring, read without importing it."""
    path = ROOT.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def write_api() -> None:
    modules = public_modules()
    rows = []
    for module in modules:
        page = f"reference/api/{module}.md"
        with mkdocs_gen_files.open(page, "w") as out:
            out.write(f"# `{module}`\n\n::: {module}\n    options:\n      show_root_heading: false\n")
        mkdocs_gen_files.set_edit_path(page, Path(*module.split(".")))
        rows.append(f"| [`{module}`]({module}.md) | {first_line(module)} |")
    with mkdocs_gen_files.open("reference/api/SUMMARY.md", "w") as out:
        out.write("* [Modules](index.md)\n" + "".join(f"* [{m}]({m}.md)\n" for m in modules))
    with mkdocs_gen_files.open("reference/api/index.md", "w") as out:
        out.write(
            "# API reference\n\nEvery public module of symtrain, rendered from its docstrings "
            "(their `Examples:` run in the test suite as doctests).\n\n"
            "| module | what it holds |\n|---|---|\n" + "\n".join(rows) + "\n"
        )


def leading_comment(path: Path) -> str:
    """The comment block a config file starts with, without its ``#`` marks."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:])
    return "\n".join(lines).strip("\n")


def write_configs() -> None:
    out = [
        "# Configs\n",
        "Every file under `configs/`, described by its own leading comment. Files stack: "
        "later `--config` files and flags win.\n",
    ]
    folders: dict[str, list[Path]] = {}
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        folders.setdefault(str(path.parent.relative_to(ROOT)), []).append(path)
    for folder, paths in folders.items():
        out.append(f"## `{folder}/`\n")
        for path in paths:
            rel = path.relative_to(ROOT)
            target = f" (the same file as `{path.resolve().relative_to(ROOT)}`)" if path.is_symlink() else ""
            out.append(f"### `{rel}`{target}\n")
            comment = leading_comment(path.resolve())
            out.append("```text\n" + (comment or "(no comment)") + "\n```\n")
    with mkdocs_gen_files.open("reference/configs.md", "w") as page:
        page.write("\n".join(out))


def help_text(*args: str) -> str:
    env = dict(os.environ, COLUMNS="100", NO_COLOR="1")
    done = subprocess.run(
        [sys.executable, "-m", "symtrain", *args, "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.rstrip()


def write_cli() -> None:
    out = [
        "# Command line\n",
        "`python -m symtrain SUBCOMMAND --help` prints these. `fit`, `validate`, `test` and "
        "`predict` are LightningCLI's and take the same options; `fit`'s are shown.\n",
        "```text\n" + help_text() + "\n```\n",
    ]
    for sub in ("fit", "compare", "report", "data", "measure"):
        out.append(f"## `{sub}`\n")
        out.append("```text\n" + help_text(sub) + "\n```\n")
    with mkdocs_gen_files.open("reference/cli.md", "w") as page:
        page.write("\n".join(out))


write_api()
write_configs()
write_cli()
