"""Splits of image files, decoded as they are needed: the streaming path for data that does not
fit in memory, and the reader that fills the in-memory path from the same files.

A :class:`FileSplit` holds only the files' paths (one byte string each, relative to the root,
in a numpy array: forked DataLoader workers then share it without copying it page by page, as
they would a Python list whose reference counts they touch) and their labels, so its memory
does not grow with the images. :class:`ImageFiles` decodes one file per item in the workers
(:func:`~symtrain.data.images.read_image`) and resizes, crops and flips it with torchvision.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from symtrain.data.base import Split
from symtrain.data.images import BasePipeline, UnreadableImage, read_image, unreadable
from symtrain.errors import SymtrainError
from symtrain.metrics.subset import stratified_subset

# Below this many images a split is decoded in the main process: starting workers costs more.
_DECODE_IN_WORKERS_FROM = 1024


@dataclass(frozen=True)
class Decoding:
    """How a split's files become images: the channels, the side ``size`` they are brought
    to, whether they are resized (``resize`` false: they must already be ``size`` x ``size``),
    whether unreadable files are left out, and the masks' directory and class count."""

    channels: int
    size: int
    resize: bool = True
    skip_unreadable: bool = False
    masks_root: str | None = None
    num_classes: int = 0


@dataclass
class FileSplit:
    """One split as files: ``root``-relative paths and labels, decoded when read.

    Attributes:
        root: the directory the paths are relative to.
        paths: the files' relative paths, as UTF-8 byte strings (N,).
        labels: int64 class indices (N,).
        decoding: how the files become images.
        skipped: one shared flag per file, set (by any worker) when it was left out as
            unreadable; the run counts them.
    """

    root: str
    paths: np.ndarray
    labels: Tensor
    decoding: Decoding
    skipped: Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.skipped is None:
            # In shared memory: workers forked or spawned later write the same flags.
            self.skipped = torch.zeros(len(self.paths), dtype=torch.uint8).share_memory_()

    @classmethod
    def of(cls, root: str | Path, files: Sequence[tuple[Path, int]], decoding: Decoding) -> FileSplit:
        """The split of ``(path, label)`` pairs under ``root``."""
        relative = [os.path.relpath(path, root).encode() for path, _ in files]
        paths = np.array(relative, dtype=bytes)
        labels = torch.tensor([label for _, label in files], dtype=torch.int64)
        return cls(str(root), paths, labels, decoding)

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.paths[index].decode())

    def subset(self, index: Tensor) -> FileSplit:
        chosen = index.cpu().numpy()
        return FileSplit(self.root, self.paths[chosen], self.labels[index.cpu()], self.decoding)

    def dataset(
        self, pipeline: BasePipeline | None, with_masks: bool
    ) -> tuple[Dataset, Callable[[Any], Any]]:
        """Items decoded one by one (in the loader's workers), put through ``pipeline``'s image
        transform (None: the evaluation view), and stacked into batches."""
        train = pipeline is not None
        transform = (pipeline or BasePipeline()).image_transform(
            self.decoding.size, train=train, resize=self.decoding.resize
        )
        return ImageFiles(self, transform, with_masks), collate_images

    def sample(self, count: int, seed: int) -> Split:
        """A seeded, class-stratified subset of ``count`` readable images, decoded (evaluation
        view); unreadable files, when they are skipped, give way to the next in that order."""
        order = stratified_subset(self.labels, len(self) if self.decoding.skip_unreadable else count, seed)
        dataset, _ = self.dataset(None, with_masks=self.decoding.masks_root is not None)
        items = []
        for index in order.tolist():
            item = dataset[index]
            if item is not None:
                items.append(item)
            if len(items) == count:
                break
        return collate_split(items)

    def decode(self, num_workers: int, with_masks: bool) -> Split:
        """Every readable image of the split, decoded into memory (evaluation view), in the
        loader's workers when the split is large enough to be worth starting them."""
        dataset, collate = self.dataset(None, with_masks)
        workers = num_workers if len(self) >= _DECODE_IN_WORKERS_FROM else 0
        loader = DataLoader(dataset, batch_size=256, num_workers=workers, collate_fn=collate)
        size, channels = self.decoding.size, self.decoding.channels
        images = torch.empty(len(self), channels, size, size, dtype=torch.uint8)
        masks = torch.empty(len(self), size, size, dtype=torch.int64) if with_masks else None
        labels = torch.empty(len(self), dtype=torch.int64)
        filled = 0
        for batch in loader:
            count = len(batch[1])
            images[filled : filled + count] = batch[0]
            labels[filled : filled + count] = batch[1]
            if masks is not None:
                masks[filled : filled + count] = batch[2]
            filled += count
        return Split(images[:filled], labels[:filled], None if masks is None else masks[:filled])


class ImageFiles(Dataset):
    """A :class:`FileSplit` as a map-style dataset: item ``i`` is its file decoded, transformed
    and returned as (uint8 image (C, S, S), label) (and the mask (S, S) with ``with_masks``), or
    None for an unreadable file that is skipped (:func:`collate_images` drops it)."""

    def __init__(self, split: FileSplit, transform: Callable[..., Any], with_masks: bool = False) -> None:
        self.split = split
        self.transform = transform
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[Tensor, ...] | None:
        from torchvision import tv_tensors

        split, decoding = self.split, self.split.decoding
        path = split.path(index)
        try:
            image = read_image(path, decoding.channels)  # (C, H, W)
        except UnreadableImage:
            if not decoding.skip_unreadable:
                raise
            split.skipped[index] = 1
            return None
        if not decoding.resize and tuple(image.shape[-2:]) != (decoding.size, decoding.size):
            raise SymtrainError(
                f"image {path!r} is {image.shape[-1]}x{image.shape[-2]}, not {decoding.size}x{decoding.size} "
                f"like the first training image: pass --data.image_size SIZE to resize every image"
            )
        label = split.labels[index]
        if not self.with_masks:
            return self.transform(image), label
        mask = read_mask(split, index, tuple(image.shape[-2:]))
        image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(Tensor), label, mask.as_subclass(Tensor)


def read_mask(split: FileSplit, index: int, shape: tuple[int, ...]) -> Tensor:
    """The mask of a split's image as int64 (H, W) class indices: ``masks_root`` mirrors the
    image tree, with one PNG per image."""
    decoding = split.decoding
    relative = Path(split.paths[index].decode())
    path = Path(decoding.masks_root) / relative.parent / f"{relative.stem}.png"
    image_path = split.path(index)
    if not path.is_file():
        raise SymtrainError(
            f"mask {str(path)!r} of image {image_path!r} does not exist: every image needs "
            f"a PNG mask under data.masks_root with the same relative path"
        )
    try:
        with Image.open(path) as image:
            pixels = np.array(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise unreadable(path, error) from error
    if pixels.ndim != 2 or pixels.shape != shape:
        raise SymtrainError(
            f"mask {str(path)!r} has shape {pixels.shape}: masks must be single-channel "
            f"{shape[1]}x{shape[0]} PNGs of class indices, like their images"
        )
    if pixels.max(initial=0) > decoding.num_classes:
        raise SymtrainError(
            f"mask {str(path)!r} holds value {int(pixels.max())} but there are {decoding.num_classes} "
            f"classes: use 0 for background and 1..{decoding.num_classes} for the class folders"
        )
    return torch.from_numpy(pixels.astype(np.int64))


def collate_images(items: list[tuple[Tensor, ...] | None]) -> tuple[Tensor, ...]:
    """Stack decoded items into a batch (images (B, C, S, S), labels (B,)[, masks (B, S, S)]),
    leaving out the skipped ones."""
    kept = [item for item in items if item is not None]
    if not kept:
        raise SymtrainError(
            "every image of a batch was unreadable and skipped: check the data directory's files"
        )
    # torch's collate: in a worker it stacks straight into shared memory, which the batch then
    # reaches the main process through without another copy.
    return tuple(default_collate(kept))


def collate_split(items: list[tuple[Tensor, ...] | None]) -> Split:
    """Decoded items as an in-memory :class:`Split`."""
    return Split(*collate_images(items))
