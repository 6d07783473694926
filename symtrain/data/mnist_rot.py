"""MNIST-rot (Larochelle et al. 2007): the rotated-digit benchmark of Weiler & Cesa (2019).

12,000 training and 50,000 test digits, each rotated by a random angle, published as two text
files of floats (``.amat``). Weiler & Cesa train on the first 10,000 training rows and validate
on the last 2,000; so does this module. Parsing the text takes a while, so the first read
caches the digits as uint8 beside the files (``mnist_rot.npz``, written atomically).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from symtrain.data.base import ImageDataModule, Split
from symtrain.data.images import TrainTransform
from symtrain.errors import SymtrainError

TRAIN_FILE = "mnist_all_rotation_normalized_float_train_valid.amat"
TEST_FILE = "mnist_all_rotation_normalized_float_test.amat"
CACHE_FILE = "mnist_rot.npz"
SOURCE = "http://www.iro.umontreal.ca/~lisa/icml2007data/mnist_rotation_new.zip"
SIDE = 28


def read_amat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One ``.amat`` file: rows of 784 floats in [0, 1] and a label, as uint8 images
    (N, 1, 28, 28) and int64 labels (N,). Rows are reshaped as stored, as Weiler & Cesa do.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "tiny.amat"
        >>> _ = path.write_text(" ".join(["0.0"] * 783 + ["1.0", "3.0"]) + "\\n")
        >>> images, labels = read_amat(path)
        >>> images.shape, images[0, 0, 27, 27], labels.tolist()
        ((1, 1, 28, 28), 255, [3])
    """
    try:
        rows = np.loadtxt(path, dtype=np.float32, ndmin=2)
    except ValueError as error:
        raise SymtrainError(
            f"cannot read {path} ({' '.join(str(error).split())}): replace it with the file from {SOURCE}"
        ) from None
    if rows.shape[1] != SIDE * SIDE + 1:
        raise SymtrainError(
            f"{path} has {rows.shape[1]} values per row, not 785 (28x28 pixels and a label): "
            f"replace it with the file from {SOURCE}"
        )
    images = (rows[:, :-1] * 255).round().clip(0, 255).astype(np.uint8).reshape(-1, 1, SIDE, SIDE)
    return images, rows[:, -1].astype(np.int64)


class MNISTRot(ImageDataModule):
    """MNIST-rot: rotated MNIST digits as published by Larochelle et al. (2007), 28x28.

    Reads ``mnist_all_rotation_normalized_float_train_valid.amat`` (12,000 digits: the first
    10,000 train, the last 2,000 validate, as in Weiler & Cesa's experiments) and
    ``mnist_all_rotation_normalized_float_test.amat`` (50,000 digits) from ``root``: the two
    files of ``mnist_rotation_new.zip``. Nothing is downloaded.

    Args:
        root: directory holding the two ``.amat`` files.
        num_train: training digits taken from the start of the train/valid file; the rest
            validate (10,000 of 12,000 in the paper).
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        on_device: keep the splits on the GPU when training on one (see ImageDataModule).
        train_transform: the base training pipeline (``none``, ``pad_crop``, ``resized_crop``;
            see ImageDataModule).
        train_flip: random horizontal flips in the base pipeline (recorded with the run).

    Examples:
        >>> MNISTRot(root="no/such/dir")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        symtrain.errors.SymtrainError: MNIST-rot files missing from .../no/such/dir: mnist_all_rotation_normalized_float_train_valid.amat, mnist_all_rotation_normalized_float_test.amat; download mnist_rotation_new.zip from http://www.iro.umontreal.ca/~lisa/icml2007data/mnist_rotation_new.zip and unzip it there
    """  # noqa: E501

    name = "mnist_rot"

    def __init__(
        self,
        root: str = "data/mnist_rotation_new",
        num_train: int = 10_000,
        batch_size: int = 128,
        num_workers: int = 0,
        on_device: bool = True,
        train_transform: TrainTransform = "none",
        train_flip: bool = False,
    ) -> None:
        super().__init__(batch_size, 0.0, num_workers, 0, on_device, train_transform, train_flip)
        self.root = root
        folder = Path(root).absolute()
        missing = [name for name in (TRAIN_FILE, TEST_FILE) if not (folder / name).is_file()]
        if missing and not (folder / CACHE_FILE).is_file():
            raise SymtrainError(
                f"MNIST-rot files missing from {folder}: {', '.join(missing)}; download "
                f"mnist_rotation_new.zip from {SOURCE} and unzip it there"
            )
        if num_train < 1:
            raise SymtrainError(f"data.num_train is {num_train}: pass a positive number of digits")
        self.num_train = num_train
        self.num_classes = 10
        self.in_channels = 1
        self.image_size = SIDE
        # MNIST's statistics (the CLI links them into the model before any file is read;
        # rotating a centred digit keeps its mean, and its spread nearly).
        self.mean = (0.1307,)
        self.std = (0.3081,)
        self.class_names = [str(digit) for digit in range(10)]

    def _arrays(self) -> dict[str, np.ndarray]:
        folder = Path(self.root)
        cache = folder / CACHE_FILE
        if cache.is_file():
            with np.load(cache) as arrays:
                return dict(arrays)
        train_images, train_labels = read_amat(folder / TRAIN_FILE)
        test_images, test_labels = read_amat(folder / TEST_FILE)
        arrays = {
            "train_images": train_images,
            "train_labels": train_labels,
            "test_images": test_images,
            "test_labels": test_labels,
        }
        partial = folder / f".{CACHE_FILE}.partial"
        try:
            with open(partial, "wb") as file:
                np.savez(file, **arrays)
            os.replace(partial, cache)  # a reader never finds half a cache
        except OSError:  # a read-only data directory: parse again next time
            partial.unlink(missing_ok=True)
        return arrays

    def load_splits(self) -> dict[str, Split]:
        arrays = self._arrays()
        images, labels = torch.from_numpy(arrays["train_images"]), torch.from_numpy(arrays["train_labels"])
        if self.num_train >= len(labels):
            raise SymtrainError(
                f"data.num_train is {self.num_train} but the train/valid file holds {len(labels)} "
                "digits: keep some for validation (the paper: 10000)"
            )
        test = Split(torch.from_numpy(arrays["test_images"]), torch.from_numpy(arrays["test_labels"]))
        return {
            "train": Split(images[: self.num_train], labels[: self.num_train]),
            "val": Split(images[self.num_train :], labels[self.num_train :]),
            "test": test,
        }
