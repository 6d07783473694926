"""Splits of encoded images, decoded as they are needed: the streaming path for data that does
not fit in memory (files in a folder, or the same files' bytes in shards), and the reader that
fills the in-memory path.

An :class:`EncodedSplit` holds only what names each image (for files, one byte string each,
relative to the root, in a numpy array: forked DataLoader workers then share it without copying
it page by page, as they would a Python list whose reference counts they touch) and its label,
so its memory does not grow with the images. :class:`EncodedImages` decodes one image per item
in the loader's workers (:func:`~symtrain.data.images.read_image`) and resizes, crops and flips
it with torchvision.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from symtrain.data.base import Split
from symtrain.data.images import BasePipeline, Interpolation, UnreadableImage, read_image, unreadable
from symtrain.errors import SymtrainError
from symtrain.metrics.subset import stratified_subset

# Below this many images a split is decoded in the main process: starting workers costs more.
_DECODE_IN_WORKERS_FROM = 1024


@dataclass(frozen=True)
class Decoding:
    """How a split's images are decoded: the channels, the side ``size`` they are brought to,
    whether they are resized (``resize`` false: they must already be ``size`` x ``size``),
    whether unreadable ones are left out, the masks' directory and class count, and the
    evaluation view's ``crop_fraction`` (timm's ``crop_pct``; None: 1) and resize
    ``interpolation`` (None: bilinear): see :meth:`~symtrain.data.images.BasePipeline.image_transform`."""

    channels: int
    size: int
    resize: bool = True
    skip_unreadable: bool = False
    masks_root: str | None = None
    num_classes: int = 0
    crop_fraction: float | None = None
    interpolation: Interpolation | None = None


class EncodedSplit:
    """One split of encoded images and their labels, decoded when read.

    Subclasses say where image ``index`` is (:meth:`source`). ``skipped`` holds one flag per
    image in shared memory, set by whichever loader worker found it unreadable (when those are
    skipped); the run counts them.

    Args:
        labels: int64 class indices (N,).
        decoding: how the images are decoded.
    """

    blocks: list[int] | None = None  # runs of images stored together (shards' chunks)

    def __init__(self, labels: Tensor, decoding: Decoding) -> None:
        self.labels = labels
        self.decoding = decoding
        self.skipped = torch.zeros(len(labels), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.labels)

    def source(self, index: int) -> tuple[str, bytes | None]:
        """Image ``index``'s name, and its encoded bytes (None: the name is a file to read)."""
        raise NotImplementedError

    def mask_path(self, index: int) -> Path:
        raise SymtrainError(
            f"{type(self).__name__} holds no masks: segment from an ImageFolder with masks_root"
        )

    def item(
        self, index: int, transform: Callable[..., Any], with_masks: bool = False
    ) -> tuple[Tensor, ...] | None:
        """Image ``index`` decoded and transformed: (uint8 image (C, S, S), label[, mask (S, S)]),
        or None when it is unreadable and skipped."""
        from torchvision import tv_tensors

        decoding = self.decoding
        name, encoded = self.source(index)
        try:
            image = read_image(name, decoding.channels, encoded)  # (C, H, W)
        except UnreadableImage:
            if not decoding.skip_unreadable:
                raise
            self.skipped[index] = 1
            return None
        if not decoding.resize and tuple(image.shape[-2:]) != (decoding.size, decoding.size):
            raise SymtrainError(
                f"image {name!r} is {image.shape[-1]}x{image.shape[-2]}, not {decoding.size}x{decoding.size} "
                f"like the first training image: pass --data.image_size SIZE to resize every image"
            )
        label = self.labels[index]
        if not with_masks:
            return transform(image), label
        mask = read_mask(self.mask_path(index), name, tuple(image.shape[-2:]), decoding.num_classes)
        image, mask = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(Tensor), label, mask.as_subclass(Tensor)

    def transform(self, pipeline: BasePipeline | None) -> Callable[..., Any]:
        """``pipeline``'s image transform (None: the evaluation view) at this split's size."""
        train, decoding = pipeline is not None, self.decoding
        return (pipeline or BasePipeline()).image_transform(
            decoding.size, train, decoding.resize, decoding.crop_fraction, decoding.interpolation
        )

    def dataset(
        self, pipeline: BasePipeline | None, with_masks: bool
    ) -> tuple[Dataset, Callable[[Any], Any]]:
        """Items decoded one by one (in the loader's workers), put through ``pipeline``'s image
        transform (None: the evaluation view), and stacked into batches; an unreadable image that
        is skipped gives way to the next readable one, so batches stay full."""
        return EncodedImages(self, self.transform(pipeline), with_masks, substitute=True), collate_images

    def sample(self, count: int, seed: int) -> Split:
        """A seeded, class-stratified subset of ``count`` readable images, decoded (evaluation
        view); unreadable ones, when they are skipped, give way to the next in that order."""
        order = stratified_subset(self.labels, len(self) if self.decoding.skip_unreadable else count, seed)
        transform = self.transform(None)
        items = []
        for index in order.tolist():
            item = self.item(index, transform)
            if item is not None:
                items.append(item)
            if len(items) == count:
                break
        if not items:
            raise SymtrainError("no image of the split can be decoded: check its files")
        return Split(*collate_images(items))

    def decode(self, num_workers: int, with_masks: bool) -> Split:
        """Every readable image of the split, decoded into memory (evaluation view), in the
        loader's workers when the split is large enough to be worth starting them."""
        dataset = EncodedImages(self, self.transform(None), with_masks, substitute=False)
        workers = num_workers if len(self) >= _DECODE_IN_WORKERS_FROM else 0
        loader = DataLoader(dataset, batch_size=256, num_workers=workers, collate_fn=collate_images)
        size, channels = self.decoding.size, self.decoding.channels
        images = torch.empty(len(self), channels, size, size, dtype=torch.uint8)
        masks = torch.empty(len(self), size, size, dtype=torch.int64) if with_masks else None
        labels = torch.empty(len(self), dtype=torch.int64)
        filled = 0
        for batch in loader:
            if batch is None:  # every image of it skipped
                continue
            count = len(batch[1])
            images[filled : filled + count] = batch[0]
            labels[filled : filled + count] = batch[1]
            if masks is not None:
                masks[filled : filled + count] = batch[2]
            filled += count
        return Split(images[:filled], labels[:filled], None if masks is None else masks[:filled])


class FileSplit(EncodedSplit):
    """One split as image files under ``root``.

    Args:
        root: the directory the paths are relative to.
        paths: the files' relative paths, as file-system byte strings (N,) (``os.fsencode``).
        labels: int64 class indices (N,).
        decoding: how the files are decoded.
    """

    def __init__(self, root: str, paths: np.ndarray, labels: Tensor, decoding: Decoding) -> None:
        super().__init__(labels, decoding)
        self.root = root
        self.paths = paths

    def name(self, index: int) -> str:
        """File ``index``'s path relative to the root."""
        return os.fsdecode(self.paths[index])

    def source(self, index: int) -> tuple[str, bytes | None]:
        return os.path.join(self.root, self.name(index)), None

    def mask_path(self, index: int) -> Path:
        relative = Path(self.name(index))
        return Path(self.decoding.masks_root) / relative.parent / f"{relative.stem}.png"

    def subset(self, index: Tensor) -> FileSplit:
        return FileSplit(self.root, self.paths[index.cpu().numpy()], self.labels[index.cpu()], self.decoding)


class EncodedImages(Dataset):
    """An :class:`EncodedSplit` as a map-style dataset: item ``i`` is image ``i`` decoded and
    transformed. An unreadable image that is skipped is None, or with ``substitute`` the next
    readable image of the split (batches then stay full, and every process of a DDP run takes the
    same number of steps)."""

    def __init__(
        self,
        split: EncodedSplit,
        transform: Callable[..., Any],
        with_masks: bool = False,
        substitute: bool = False,
    ) -> None:
        self.split, self.transform = split, transform
        self.with_masks, self.substitute = with_masks, substitute

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[Tensor, ...] | None:
        tries = len(self.split) if self.substitute else 1
        for offset in range(tries):
            item = self.split.item((index + offset) % len(self.split), self.transform, self.with_masks)
            if item is not None:
                return item
        if self.substitute:
            raise SymtrainError("no image of the split can be decoded: check its files")
        return None


def read_mask(path: Path, image_name: str, shape: tuple[int, ...], num_classes: int) -> Tensor:
    """An image's mask as int64 (H, W) class indices: a single-channel PNG of the image's size,
    annotated on the upright image (masks are read as stored)."""
    if not path.is_file():
        raise SymtrainError(
            f"mask {str(path)!r} of image {image_name!r} does not exist: every image needs "
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
    if pixels.max(initial=0) > num_classes:
        raise SymtrainError(
            f"mask {str(path)!r} holds value {int(pixels.max())} but there are {num_classes} "
            f"classes: use 0 for background and 1..{num_classes} for the class folders"
        )
    return torch.from_numpy(pixels.astype(np.int64))


def collate_images(items: list[tuple[Tensor, ...] | None]) -> tuple[Tensor, ...] | None:
    """Stack decoded items into a batch (images (B, C, S, S), labels (B,)[, masks (B, S, S)]),
    leaving out the skipped ones (None when all were)."""
    kept = [item for item in items if item is not None]
    # torch's collate: in a worker it stacks straight into shared memory, which the batch then
    # reaches the main process through without another copy.
    return tuple(default_collate(kept)) if kept else None
