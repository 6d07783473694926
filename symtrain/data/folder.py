"""The user's own images, one directory per class (ImageNet's layout among them), held in memory
when they fit and streamed from disk when they do not, with optional per-pixel masks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_info

from symtrain.data.base import ImageDataModule, SplitSource
from symtrain.data.files import Decoding, FileSplit
from symtrain.data.images import (
    GRAY_MODES,
    Interpolation,
    TrainTransform,
    check_evaluation,
)
from symtrain.data.layout import first_image, list_files
from symtrain.data.statistics_cache import cached_statistics
from symtrain.errors import SymtrainError

Storage = Literal["auto", "memory", "stream"]


def default_workers() -> int:
    """DataLoader workers that decode files: one per core this process may use, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores))


class ImageFolder(ImageDataModule):
    """Images from disk, laid out as ``root/{train,val,test}/<class>/*`` (JPEG, PNG, BMP, WebP,
    TIFF): your own photos, or ImageNet as it comes (``train/<wnid>/*.JPEG``, ``val/<wnid>/``).

    Class names are the sorted subdirectories of ``train``; ``val`` and ``test`` may lack a
    class but not add one. ``val`` is optional (carved out of ``train`` when absent); ``test``
    is optional when ``val`` exists: the test metrics are then the validation split's, and
    ``summary.json`` says so (``data.test_split: val``).

    Every image is decoded upright (EXIF orientation applied) and converted to ``channels``
    (grayscale, RGB, palette, RGBA, CMYK and 16-bit images included). With ``image_size`` S it
    is brought to S x S as torchvision's recipes do for evaluation (shorter side resized to S,
    centre crop), or as a pretrained model's timm data config says (``crop_fraction``: its
    ``crop_pct``, e.g. 0.875: shorter side resized to 256 for S = 224, centre 224 kept;
    ``interpolation``); without, all images must already be square and of one size.

    Small data is decoded once into memory (the fast path); data whose decoded size exceeds
    ``memory_budget_mb`` is streamed: decoded in the DataLoader's workers as it is needed, with
    a memory that does not grow with the number of images. ``storage`` forces either.

    For segmentation, ``masks_root`` mirrors the tree: the mask of ``root/train/cat/a.jpg`` is
    ``masks_root/train/cat/a.png``, a single-channel (grayscale or palette) PNG of the image's
    size whose pixel values are class indices: 0 for background, k for the k-th class of
    :attr:`class_names` (counting from 1).

    Args:
        root: directory holding ``train`` and ``test`` and/or ``val``.
        image_size: side S of the square images the model sees (resize and centre crop); None
            keeps the images as they are (all one square size).
        masks_root: directory of the masks (above); None for classification only.
        channels: 1 (grayscale) or 3 (RGB); every image is converted to it. By default
            grayscale when the first training image is, else RGB.
        mean: per-channel mean of the images in [0, 1]; None estimates it from up to 1,000
            seeded training images, once, and caches it in ``root/.symtrain-stats.json``.
        std: per-channel standard deviation, likewise.
        train_transform: the base training pipeline: ``none``, ``pad_crop`` or ``resized_crop``
            (see :class:`~symtrain.data.images.BasePipeline`).
        train_flip: random horizontal flips in the base pipeline (recorded with the run).
        storage: ``auto`` (memory when the decoded images fit ``memory_budget_mb``), ``memory``
            or ``stream``.
        memory_budget_mb: the decoded size up to which ``auto`` holds the images in memory.
        skip_unreadable: leave out files that cannot be decoded (counted in ``summary.json``)
            instead of stopping at the first one.
        batch_size: samples per batch.
        val_fraction: share of the training split used for validation when there is no
            ``val`` directory.
        num_workers: DataLoader worker processes; None: none in memory, one per core (at most
            8) when decoding files.
        split_seed: seed of the validation carve-out.
        on_device: keep in-memory splits on the GPU when training on one (see ImageDataModule).
        crop_fraction: the share of the resized image's shorter side that the evaluation centre
            crop keeps: timm's ``crop_pct`` (``resolve_data_config``; ``crop_mode='center'``).
            The shorter side is resized to ``floor(S / crop_fraction)`` (as timm rounds it), then
            the centre S x S is cropped: 0.875 gives the papers' 256 -> 224. In (0, 1], and only
            with ``image_size``; None: 1 (shorter side resized to S). The ``none`` and
            ``pad_crop`` training views start from this view too.
        interpolation: the resizes' interpolation, ``bilinear``, ``bicubic`` or ``nearest``
            (torchvision's ``InterpolationMode``, antialiased; timm's ``interpolation``), the
            ``resized_crop`` of training images included; None: bilinear.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> sizes = [("train", "cat", (8, 8)), ("train", "dog", (12, 9)), ("test", "cat", (9, 7))]
        >>> for split, label, size in sizes:  # photos of any size: resized, centre-cropped
        ...     (Path(tmp.name) / split / label).mkdir(parents=True)
        ...     Image.new("L", size, 100).save(Path(tmp.name) / split / label / "a.png")
        >>> data = ImageFolder(tmp.name, image_size=6)
        >>> data.class_names, data.in_channels, data.image_size, data.storage
        (['cat', 'dog'], 1, 6, 'memory')
        >>> data.setup()
        >>> data.splits["test"].images.shape
        torch.Size([1, 1, 6, 6])
        >>> tmp.cleanup()
    """

    name = "folder"

    def __init__(
        self,
        root: str,
        image_size: int | None = None,
        masks_root: str | None = None,
        channels: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        train_transform: TrainTransform = "none",
        train_flip: bool = False,
        storage: Storage = "auto",
        memory_budget_mb: float = 2048,
        skip_unreadable: bool = False,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        num_workers: int | None = None,
        split_seed: int = 0,
        on_device: bool = True,
        crop_fraction: float | None = None,
        interpolation: Interpolation | None = None,
    ) -> None:
        super().__init__(batch_size, val_fraction, 0, split_seed, on_device, train_transform, train_flip)
        self.root = root
        check_evaluation(crop_fraction, interpolation)
        if crop_fraction is not None and image_size is None:
            raise SymtrainError(
                f"data.crop_fraction is {crop_fraction} but images are not resized: pass --data.image_size "
                f"SIZE as well (the side the centre crop keeps), or leave data.crop_fraction null"
            )
        self.crop_fraction, self.interpolation = crop_fraction, interpolation
        self.masks_root = masks_root
        self.has_masks = masks_root is not None
        if masks_root is not None and not Path(masks_root).is_dir():
            raise SymtrainError(
                f"data.masks_root {masks_root!r} is not a directory: pass the directory whose "
                f"train/<class>/<name>.png masks mirror the images"
            )
        if image_size is not None and image_size < 1:
            raise SymtrainError(f"data.image_size is {image_size}: pass a positive side in pixels")
        self.class_names, names = list_files(Path(root))
        first, mode, pixels = first_image(root, names["train"], skip_unreadable)
        height, width = pixels.shape[-2:]
        if image_size is None and width != height:
            raise SymtrainError(
                f"image {first!r} is {width}x{height}: pass --data.image_size SIZE to resize "
                f"and centre-crop every image to SIZE x SIZE"
            )
        if channels is None:
            channels = 1 if mode in GRAY_MODES else 3
        if channels not in (1, 3):
            raise SymtrainError(f"data.channels is {channels}: pass 1 (grayscale) or 3 (RGB)")
        self.in_channels = channels
        self.image_size = height if image_size is None else image_size
        self.num_classes = len(self.class_names)
        self.decoding = Decoding(
            channels, self.image_size, image_size is not None, skip_unreadable, masks_root, self.num_classes,
            crop_fraction=crop_fraction, interpolation=interpolation,
        )  # fmt: skip
        self.files = {
            split: FileSplit(
                root, np.array(paths, dtype=bytes), torch.tensor(labels, dtype=torch.int64), self.decoding
            )
            for split, (paths, labels) in names.items()
        }
        del names
        count = sum(len(files) for files in self.files.values())
        # uint8 images, and int64 masks for segmentation
        decoded_mb = count * (channels + 8 * self.has_masks) * self.image_size**2 / 2**20
        fits = decoded_mb <= memory_budget_mb
        self.storage = storage if storage != "auto" else "memory" if fits else "stream"
        if num_workers is None:  # in-memory batches are one indexing operation: no workers
            num_workers = default_workers() if self.storage == "stream" else 0
        self.num_workers = num_workers
        self.test_split = "test" if "test" in self.files else "val"
        if (mean is None) != (std is None):
            raise SymtrainError("pass both data.mean and data.std, or neither (then both are estimated)")
        if mean is not None and std is not None:
            if len(mean) != channels or len(std) != channels or min(std) <= 0:
                raise SymtrainError(
                    f"data.mean and data.std need {channels} value(s) each, std positive: "
                    f"got {mean} and {std}"
                )
            self.mean, self.std = tuple(mean), tuple(std)
        else:
            workers = self.num_workers or default_workers()  # to decode the sample on a cache miss
            self.mean, self.std = cached_statistics(
                root, self.files["train"], self._statistics_settings(), workers
            )

    def _statistics_settings(self) -> str:
        """The settings that decide the evaluation view's pixels, as the statistics cache's key
        begins: ``channels:size:resize``, as before the evaluation options existed, followed by
        ``:crop=F`` and ``:interpolation=M`` only when those change the pixels (a crop fraction
        other than 1, an interpolation other than bilinear of a resize), so that the caches
        written without them stay valid.

        Examples:
            >>> import types
            >>> from symtrain.data.files import Decoding
            >>> folder = types.SimpleNamespace(in_channels=3, image_size=24)
            >>> folder.decoding = Decoding(3, 24, True)
            >>> ImageFolder._statistics_settings(folder)
            '3:24:True'
            >>> folder.decoding = Decoding(3, 24, True, crop_fraction=0.875, interpolation="bicubic")
            >>> ImageFolder._statistics_settings(folder)
            '3:24:True:crop=0.875:interpolation=bicubic'
        """
        decoding = self.decoding
        settings = f"{self.in_channels}:{self.image_size}:{decoding.resize}"
        if decoding.resize and decoding.crop_fraction not in (None, 1):
            settings += f":crop={decoding.crop_fraction}"
        if decoding.resize and decoding.interpolation not in (None, "bilinear"):
            settings += f":interpolation={decoding.interpolation}"
        return settings

    def load_splits(self) -> dict[str, SplitSource]:
        splits: dict[str, SplitSource] = dict(self.files)
        if self.storage == "memory":
            workers = self.num_workers or default_workers()
            splits = {name: split.decode(workers, self.has_masks) for name, split in self.files.items()}
            self.skipped_elsewhere = sum(int(split.skipped.sum()) for split in self.files.values())
        if "test" not in splits:
            splits["test"] = splits["val"]
            rank_zero_info(f"{self.root!r} has no test/ folder: the test metrics are the val split's")
        return splits
