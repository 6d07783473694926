"""``python -m symtrain data``: preparing data on disk.

    python -m symtrain data digits-folder --out data/digits_folder
    python -m symtrain data shards --root data/digits_folder --out data/digits_shards --image_size 29

``digits-folder`` writes the real digits as a folder of image files of every size, format and
mode (:mod:`symtrain.data.photos`); ``shards`` converts an image folder into litdata shards
(:mod:`symtrain.data.shards`) for clusters, shared file systems and object stores.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse import ArgumentParser

from symtrain.errors import SymtrainError


def _digits_folder(out: str, root: str, copies: int, seed: int) -> None:
    from symtrain.data.digits import MNIST5k
    from symtrain.data.photos import write_photo_folder

    if Path(out).exists() and any(Path(out).iterdir()):
        raise SymtrainError(f"{out!r} exists and is not empty: pass --out a new directory")
    digits = MNIST5k(root=root)
    digits.setup()
    splits = {name: (split.images, split.labels) for name, split in digits.splits.items()}
    written = write_photo_folder(out, splits, digits.class_names, seed=seed)
    for copy in range(1, copies):  # more training images, each copy of its own sizes and kinds
        train = {"train": splits["train"]}
        written += write_photo_folder(out, train, digits.class_names, seed=seed + copy, prefix=f"c{copy}-")
    sys.stdout.write(f"{written} images in {out} (train/, val/, test/; one folder per digit)\n")


def parser() -> ArgumentParser:
    main = ArgumentParser(prog="python -m symtrain data", description=__doc__, exit_on_error=False)
    commands = main.add_subcommands(required=True)
    digits = ArgumentParser(description="the real digits as a folder of image files of mixed sizes and kinds")
    digits.add_argument("--out", type=str, required=True, help="the folder to write")
    digits.add_argument("--root", type=str, default="data", help="where mnist_5k.csv.gz is (make digits)")
    digits.add_argument(
        "--copies", type=int, default=1, help="write the training digits this many times (more images)"
    )
    digits.add_argument("--seed", type=int, default=0, help="seeds the sizes")
    commands.add_subcommand("digits-folder", digits, help="the real digits as image files")
    from symtrain.data.shards import shards_parser

    commands.add_subcommand("shards", shards_parser(), help="an image folder as litdata shards")
    return main


def data_main(args: list[str]) -> None:
    from jsonargparse import ArgumentError

    from symtrain.errors import one_line_error

    try:
        parsed = parser().parse_args(args).as_dict()
    except ArgumentError as error:
        raise SymtrainError(one_line_error(str(error))) from None
    command = parsed["subcommand"]
    options = parsed[command]
    options.pop("config", None)
    if command == "digits-folder":
        _digits_folder(**options)
    else:
        from symtrain.data.shards import write_shards

        write_shards(**options)
