"""MNIST, rotated MNIST and CIFAR-10, read from torchvision's files into uint8 tensors.

torchvision only parses the files; the raw ``data``/``targets`` arrays are taken as a whole, so
no per-sample PIL conversion happens. Nothing is ever downloaded unless ``download`` is true:
missing files raise a :class:`~symtrain.errors.SymtrainError` that says exactly which files
are missing and where torchvision expects them.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torchvision
from torch import Tensor

from symtrain.data.base import ImageDataModule, Split
from symtrain.data.images import TrainTransform
from symtrain.errors import SymtrainError
from symtrain.transforms import Rotation

# Images rotated per kornia call: bounds the float copies and sampling grids to ~100 MB.
_ROTATE_BLOCK = 8192


def rotate_images(images: Tensor, angles: Tensor) -> Tensor:
    """Rotate each uint8 image counter-clockwise about its centre by its own angle: the
    rotation family's own action (:meth:`symtrain.transforms.Rotation.apply`: bilinear, zero
    fill outside the original image), rounded back to uint8.

    Args:
        images: uint8 images (N, C, H, W).
        angles: angles in degrees (N,).

    Returns:
        The rotated uint8 images (N, C, H, W).

    Examples:
        >>> image = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
        >>> image[0, 0, 2, 4] = 200  # right of the centre
        >>> rotate_images(image, torch.tensor([90.0]))[0, 0, 0, 2].item()  # now above it
        200
    """
    rotated = torch.empty_like(images)
    for start in range(0, images.shape[0], _ROTATE_BLOCK):
        block = slice(start, start + _ROTATE_BLOCK)
        pixels = images[block].float()  # (B, C, H, W)
        turned = Rotation().apply(pixels, angles[block].float()[:, None])
        rotated[block] = turned.round().clamp(0, 255).to(torch.uint8)
    return rotated


class _TorchvisionData(ImageDataModule):
    """Shared file checks, downloading and error messages of the torchvision-backed sets.

    Subclasses set ``_title`` (the name users see in messages), ``_dataset`` (the torchvision
    dataset class), ``_subdir`` (the directory under ``root`` torchvision reads) and
    ``_files`` (the file names it needs there), and implement :meth:`_read`.
    """

    _title: str
    _dataset: Any
    _subdir: str
    _files: tuple[str, ...]

    def __init__(
        self,
        root: str,
        download: bool,
        batch_size: int,
        val_fraction: float,
        num_workers: int,
        split_seed: int,
        on_device: bool,
        train_transform: TrainTransform = "none",
        train_flip: bool = False,
    ) -> None:
        super().__init__(
            batch_size, val_fraction, num_workers, split_seed, on_device, train_transform, train_flip
        )
        self.root = root
        self.download = download
        # Checked now rather than in setup so a run fails before any logger or model exists.
        if not download:
            self._require_files()

    @property
    def folder(self) -> str:
        """The absolute directory torchvision reads this dataset's files from."""
        return os.path.abspath(os.path.join(self.root, self._subdir))

    def missing_files(self) -> list[str]:
        """Names of the needed files that are not in :attr:`folder`."""
        return [name for name in self._files if not os.path.isfile(os.path.join(self.folder, name))]

    def _require_files(self) -> None:
        missing = self.missing_files()
        if missing:
            raise SymtrainError(
                f"{self._title} files missing from {self.folder}: {', '.join(missing)}; "
                f"put them in that directory, or pass --data.download true on a machine "
                f"with a network to fetch them"
            )

    def prepare_data(self) -> None:
        if self.download and self.missing_files():
            try:
                self._dataset(self.root, train=True, download=True)
            except (OSError, RuntimeError) as error:
                reason = " ".join(str(error).split())
                raise SymtrainError(
                    f"downloading {self._title} into {self.folder} failed ({reason}): "
                    f"check the network, or put the files {', '.join(self._files)} there by hand"
                ) from error

    def _read(self, dataset: Any) -> tuple[Tensor, Tensor]:
        """Return the uint8 images (N, C, H, W) and int64 labels (N,) of a parsed dataset."""
        raise NotImplementedError

    def _load(self, train: bool) -> Split:
        try:
            dataset = self._dataset(self.root, train=train, download=False)
        # torchvision rejects a malformed MNIST header with a bare assert.
        except (AssertionError, OSError, RuntimeError, ValueError) as error:
            reason = " ".join(str(error).split()) or "malformed file header"
            raise SymtrainError(
                f"could not read {self._title} from {self.folder} ({reason}): delete the "
                f"files there and fetch them again with --data.download true"
            ) from error
        images, labels = self._read(dataset)
        return Split(images, labels)

    def load_splits(self) -> dict[str, Split]:
        self.prepare_data()
        self._require_files()
        return {"train": self._load(train=True), "test": self._load(train=False)}


class MNIST(_TorchvisionData):
    """The MNIST handwritten digits, 28x28 grayscale, 60k train and 10k test images.

    Files live where torchvision expects them: ``root/MNIST/raw`` (the uncompressed idx
    files). Validation is carved out of the training split.

    Args:
        root: directory that holds (or will hold) ``MNIST/raw``.
        download: fetch missing files from the internet; never attempted when false.
        batch_size: samples per batch.
        val_fraction: share of the training split used for validation.
        num_workers: DataLoader worker processes.
        split_seed: seed of the validation carve-out.
        on_device: keep the splits on the GPU when training on one (see ImageDataModule).
        train_transform: the base training pipeline (``none``, ``pad_crop``, ``resized_crop``;
            see ImageDataModule).
        train_flip: random horizontal flips in the base pipeline (recorded with the run).

    Examples:
        >>> data = MNIST(root="data", download=True)  # downloads only in prepare_data/setup
        >>> data.num_classes, data.in_channels, data.image_size, data.mean
        (10, 1, 28, (0.1307,))
    """

    name = "mnist"
    _title = "MNIST"
    _dataset = torchvision.datasets.MNIST
    _subdir = os.path.join("MNIST", "raw")
    _files = tuple(os.path.splitext(file)[0] for file, _ in torchvision.datasets.MNIST.resources)

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        split_seed: int = 0,
        on_device: bool = True,
        train_transform: TrainTransform = "none",
        train_flip: bool = False,
    ) -> None:
        super().__init__(
            root,
            download,
            batch_size,
            val_fraction,
            num_workers,
            split_seed,
            on_device,
            train_transform,
            train_flip,
        )
        self.num_classes = 10
        self.in_channels = 1
        self.image_size = 28
        self.mean = (0.1307,)
        self.std = (0.3081,)
        self.class_names = [str(digit) for digit in range(10)]

    def _read(self, dataset: Any) -> tuple[Tensor, Tensor]:
        images = dataset.data.to(torch.uint8).unsqueeze(1)  # (N, 1, 28, 28)
        return images, dataset.targets.long()


class RotatedMNIST(MNIST):
    """MNIST with every train and test digit rotated by a fixed random angle in [0, 360).

    The MNIST-rot protocol: both splits are rotated, so a model sees all orientations in
    training. Angles are drawn from ``seed`` (train first, then test) and applied once, with
    bilinear interpolation, by :func:`rotate_images`. Same files as :class:`MNIST`.

    Args:
        root: directory that holds (or will hold) ``MNIST/raw``.
        download: fetch missing files from the internet; never attempted when false.
        seed: seed of the rotation angles.
        batch_size: samples per batch.
        val_fraction: share of the training split used for validation.
        num_workers: DataLoader worker processes.
        split_seed: seed of the validation carve-out.
        on_device: keep the splits on the GPU when training on one (see ImageDataModule).
        train_transform: the base training pipeline (``none``, ``pad_crop``, ``resized_crop``;
            see ImageDataModule).
        train_flip: random horizontal flips in the base pipeline (recorded with the run).

    Examples:
        >>> data = RotatedMNIST(root="data", download=True)
        >>> data.name, data.num_classes
        ('rotated_mnist', 10)
    """

    name = "rotated_mnist"

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
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
            root,
            download,
            batch_size,
            val_fraction,
            num_workers,
            split_seed,
            on_device,
            train_transform,
            train_flip,
        )
        self.seed = seed

    def load_splits(self) -> dict[str, Split]:
        splits = super().load_splits()
        generator = torch.Generator().manual_seed(self.seed)
        for name in ("train", "test"):
            split = splits[name]
            angles = torch.rand(len(split), generator=generator) * 360.0
            splits[name] = Split(rotate_images(split.images, angles), split.labels)
        return splits


class CIFAR10(_TorchvisionData):
    """CIFAR-10: 32x32 colour images of 10 object classes, 50k train and 10k test.

    Files live where torchvision expects them: ``root/cifar-10-batches-py`` (the extracted
    ``cifar-10-python.tar.gz``). Validation is carved out of the training split.

    Args:
        root: directory that holds (or will hold) ``cifar-10-batches-py``.
        download: fetch missing files from the internet; never attempted when false.
        batch_size: samples per batch.
        val_fraction: share of the training split used for validation.
        num_workers: DataLoader worker processes.
        split_seed: seed of the validation carve-out.
        on_device: keep the splits on the GPU when training on one (see ImageDataModule).
        train_transform: the base training pipeline (``none``, ``pad_crop``, ``resized_crop``;
            see ImageDataModule).
        train_flip: random horizontal flips in the base pipeline (recorded with the run).

    Examples:
        >>> data = CIFAR10(root="data", download=True)
        >>> data.in_channels, data.class_names[:3]
        (3, ['airplane', 'automobile', 'bird'])
    """

    name = "cifar10"
    _title = "CIFAR-10"
    _dataset = torchvision.datasets.CIFAR10
    _subdir = torchvision.datasets.CIFAR10.base_folder
    _files = (
        *(file for file, _ in torchvision.datasets.CIFAR10.train_list),
        *(file for file, _ in torchvision.datasets.CIFAR10.test_list),
        torchvision.datasets.CIFAR10.meta["filename"],
    )

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        split_seed: int = 0,
        on_device: bool = True,
        train_transform: TrainTransform = "none",
        train_flip: bool = False,
    ) -> None:
        super().__init__(
            root,
            download,
            batch_size,
            val_fraction,
            num_workers,
            split_seed,
            on_device,
            train_transform,
            train_flip,
        )
        self.num_classes = 10
        self.in_channels = 3
        self.image_size = 32
        # Per-channel mean and (per-pixel) standard deviation of the training images.
        self.mean = (0.4914, 0.4822, 0.4465)
        self.std = (0.2470, 0.2435, 0.2616)
        self.class_names = [
            "airplane", "automobile", "bird", "cat", "deer",
            "dog", "frog", "horse", "ship", "truck",
        ]  # fmt: skip

    def _read(self, dataset: Any) -> tuple[Tensor, Tensor]:
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        return images, torch.tensor(dataset.targets, dtype=torch.int64)
