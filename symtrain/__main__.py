"""``python -m symtrain``: the command line, started with a fixed hash seed."""

import os
import sys

from symtrain.clock import note_process_start

# The subcommands, for the top-level help. fit/validate/test/predict are LightningCLI's (their
# options come from the classes: ``fit --help``); compare and report are symtrain's own.
SUBCOMMANDS = {
    "fit": "train a model from config files and flags, then test it (one run directory per run)",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split, invariance metrics included",
    "predict": "save a checkpoint's predictions (predictions.pt in the run directory)",
    "compare": "train a backbone x strategy x seed study, then build its report",
    "report": "build the comparison report (tables, curves, HTML) of finished runs",
    "data": "prepare data on disk: the real digits as image files, an image folder as shards",
    "measure": "measure any model (a symtrain run, timm, torchvision, your own module) on any data",
}

_EXAMPLES = """\
examples:
  python -m symtrain fit --config configs/quickstart.yaml
  python -m symtrain fit --config configs/quickstart.yaml --config configs/backbone/escnn_c4.yaml
  python -m symtrain fit --help          every option of a run, with the plugins' choices
  python -m symtrain compare --config configs/compare/shapes.yaml
  python -m symtrain measure --config configs/measure/timm.yaml --data.root DIR
"""


def print_help() -> None:
    """The top-level help, without importing torch or Lightning: it is what a user asks for
    first, and building LightningCLI's parser costs the whole framework's import (seconds).
    ``SUBCOMMAND --help`` shows LightningCLI's full parser."""
    import argparse

    import symtrain  # light: its heavy attributes are imported on use

    parser = argparse.ArgumentParser(
        prog="python -m symtrain",
        description=symtrain.__doc__.strip().splitlines()[0],
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-c", "--config", metavar="CONFIG", help="a config file with a section per subcommand"
    )
    commands = parser.add_subparsers(
        title="subcommands",
        metavar="{" + ",".join(SUBCOMMANDS) + "}",
        description="add --help to one for its options",
    )
    for name, text in SUBCOMMANDS.items():
        commands.add_parser(name, help=text)
    parser.print_help()


def run() -> None:
    note_process_start()  # before the restart below, so start-up is measured from here
    if "PYTHONHASHSEED" not in os.environ:
        # escnn registers some buffers in set/dict order, which follows the hash seed (escnn
        # issue 103): with a random seed per process, DDP ranks could build different models.
        # Restart once with a fixed seed, before anything heavy is imported (milliseconds); the
        # processes a DDP launcher starts inherit it.
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    main()


def main(args: list[str] | None = None) -> None:
    """The one dispatcher of symtrain's subcommands: the top-level help, ``compare``, ``report``,
    ``data`` and ``measure`` (symtrain's own, without importing Lightning's CLI: they need none
    of it), and LightningCLI's fit, validate, test and predict."""
    argv = sys.argv[1:] if args is None else args
    if argv in (["-h"], ["--help"]):
        print_help()
        return
    from symtrain.compare import COMMANDS, run_command

    if argv[:1] and argv[0] in COMMANDS:
        run_command(argv)
        return
    from symtrain.cli import main as lightning_main

    lightning_main(args)


if __name__ == "__main__":
    run()
