"""``python -m symtrain``: the command line, started with a fixed hash seed."""

import os
import sys


def run() -> None:
    if "PYTHONHASHSEED" not in os.environ:
        # escnn registers some buffers in set/dict order, which follows the hash seed (escnn
        # issue 103): with a random seed per process, DDP ranks could build different models.
        # Restart once with a fixed seed, before anything heavy is imported (milliseconds); the
        # processes a DDP launcher starts inherit it.
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    from symtrain.compare import COMMANDS, run_command

    if sys.argv[1:2] and sys.argv[1] in COMMANDS:
        run_command(sys.argv[1:])  # without importing Lightning's CLI: a report needs none of it
        return
    from symtrain.cli import main

    main()


if __name__ == "__main__":
    run()
