"""An image folder's layout on disk: ``train/<class>/`` and ``test/<class>/`` (or ``val/``)
directories of image files, listed and checked (each mistake a one-line error naming the fix),
and the first readable training image, which decides the channels and the size."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image

from symtrain.data.images import IMAGE_SUFFIXES, UnreadableImage, read_image
from symtrain.errors import SymtrainError

SPLITS = ("train", "val", "test")
_SUFFIXES = "/".join(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)


def _readable(directory: Path) -> None:
    if not os.access(directory, os.R_OK | os.X_OK):
        raise SymtrainError(f"{str(directory)!r} cannot be read: give this user read access to it")


def _class_dirs(split_dir: Path) -> list[str]:
    _readable(split_dir)
    return sorted(
        entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith(".")
    )


def _image_names(directory: Path) -> list[str]:
    """The image files directly in ``directory`` (any of the suffixes, in any case: ImageNet's
    are ``.JPEG``), sorted, hidden files left out."""
    _readable(directory)
    return sorted(
        entry.name
        for entry in os.scandir(directory)
        if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
        and not entry.name.startswith(".")
        and entry.is_file()
    )


def list_files(base: Path) -> tuple[list[str], dict[str, tuple[list[bytes], list[int]]]]:
    """The class names (``train``'s class folders, sorted) and every split's image paths (relative
    to the root, as file-system bytes) and labels, checking the layout."""
    if not base.is_dir():
        raise SymtrainError(
            f"data.root {str(base)!r} is not a directory: pass --data.root DIR holding "
            f"train/<class>/ and test/<class>/ (or val/<class>/) image folders"
        )
    _readable(base)
    if not (base / "train").is_dir():
        raise SymtrainError(
            f"{str(base / 'train')!r} does not exist: create it with one subdirectory of images per class"
        )
    if not (base / "test").is_dir() and not (base / "val").is_dir():
        raise SymtrainError(
            f"{str(base / 'test')!r} does not exist: create it (or val/) with one subdirectory "
            f"of images per class"
        )
    class_names = _class_dirs(base / "train")
    label = {name: index for index, name in enumerate(class_names)}
    files: dict[str, tuple[list[bytes], list[int]]] = {}
    for split in SPLITS:
        split_dir = base / split
        if not split_dir.is_dir():
            continue
        present = _class_dirs(split_dir)
        if not present:
            raise SymtrainError(
                f"{str(split_dir)!r} has no class subdirectories: put each class's images in "
                f"{split}/<class>/, or remove the folder"
            )
        extra = sorted(set(present) - set(class_names))
        if extra:
            raise SymtrainError(
                f"{str(split_dir)!r} has classes {', '.join(extra)} that train does not: "
                f"add them to train/ or remove them from {split}/"
            )
        paths: list[bytes] = []
        labels: list[int] = []
        empty = []
        for name in present:
            images = _image_names(split_dir / name)
            empty += [] if images else [name]
            paths += [os.fsencode(os.path.join(split, name, image)) for image in images]
            labels += [label[name]] * len(images)
        if empty:
            raise SymtrainError(
                f"class folders {', '.join(empty)} in {str(split_dir)!r} hold no {_SUFFIXES} "
                f"images: add some or remove the folders"
            )
        files[split] = (paths, labels)
    return class_names, files


def first_image(
    root: str, train: tuple[list[bytes], list[int]], skip_unreadable: bool
) -> tuple[str, str, torch.Tensor]:
    """The path, PIL mode and decoded pixels (as RGB) of the first readable training image,
    which decides the channels and, without ``image_size``, the size."""
    for path in train[0]:
        name = os.path.join(root, os.fsdecode(path))
        try:
            pixels = read_image(name, 3)  # its upright size, as every image is read
            with Image.open(name) as image:
                return name, image.mode, pixels
        except UnreadableImage:
            if not skip_unreadable:
                raise
    raise SymtrainError(f"no training image in {root!r} can be decoded: check its files")
