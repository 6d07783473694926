"""The user's own images, one directory per class, loaded into memory as uint8 tensors, with
optional per-pixel masks for segmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from symtrain.data.base import ImageDataModule, Split
from symtrain.errors import SymtrainError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# PIL modes without colour; everything else is treated as colour.
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _images_in(directory: Path) -> list[Path]:
    return sorted(
        path
        for path in directory.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(
        path.name for path in split_dir.iterdir() if path.is_dir() and not path.name.startswith(".")
    )


def _unreadable(path: Path, error: Exception) -> SymtrainError:
    reason = " ".join(str(error).split())
    return SymtrainError(f"cannot read image {str(path)!r} ({reason}): replace or delete the file")


class ImageFolder(ImageDataModule):
    """Images from disk, laid out as ``root/{train,val,test}/<class>/*.png|jpg|jpeg|bmp``.

    Class names are the sorted subdirectories of ``train``; ``val`` and ``test`` may lack a
    class but not add one. ``val`` is optional (carved out of ``train`` when absent), ``test``
    is required. Images must be square and all of the size of the first training image.

    Construction only checks the layout and opens the first image, to learn the channels and
    the size; :meth:`setup` reads every image. ``mean``/``std`` are fixed at 0.5/0.25 per
    channel because the CLI links them into the model before any image is read; that keeps
    inputs roughly centred with unit scale for typical photographs.

    For segmentation, ``masks_root`` mirrors the tree: the mask of ``root/train/cat/a.jpg`` is
    ``masks_root/train/cat/a.png``, a single-channel (grayscale or palette) PNG of the image's
    size whose pixel values are class indices: 0 for background, k for the k-th class of
    :attr:`class_names` (counting from 1).

    Args:
        root: directory holding ``train``, ``test`` and optionally ``val``.
        masks_root: directory of the masks (above); None for classification only.
        channels: 1 (grayscale) or 3 (RGB); every image is converted to it. By default
            grayscale when the first training image is, else RGB.
        batch_size: samples per batch.
        val_fraction: share of the training split used for validation when there is no
            ``val`` directory.
        num_workers: DataLoader worker processes.
        split_seed: seed of the validation carve-out.
        on_device: keep the splits on the GPU when training on one (see ImageDataModule).

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> for split, label in [("train", "cat"), ("train", "dog"), ("test", "cat")]:
        ...     (Path(tmp.name) / split / label).mkdir(parents=True)
        ...     Image.new("L", (8, 8)).save(Path(tmp.name) / split / label / "a.png")
        >>> data = ImageFolder(tmp.name)
        >>> data.class_names, data.in_channels, data.image_size
        (['cat', 'dog'], 1, 8)
        >>> data.setup()
        >>> data.splits["test"].images.shape
        torch.Size([1, 1, 8, 8])
        >>> tmp.cleanup()
    """

    name = "folder"

    def __init__(
        self,
        root: str,
        masks_root: str | None = None,
        channels: int | None = None,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        split_seed: int = 0,
        on_device: bool = True,
    ) -> None:
        super().__init__(batch_size, val_fraction, num_workers, split_seed, on_device)
        self.root = root
        self.masks_root = masks_root
        self.has_masks = masks_root is not None
        if masks_root is not None and not Path(masks_root).is_dir():
            raise SymtrainError(
                f"data.masks_root {masks_root!r} is not a directory: pass the directory whose "
                f"train/<class>/<name>.png masks mirror the images"
            )
        base = Path(root)
        if not base.is_dir():
            raise SymtrainError(
                f"data.root {str(base)!r} is not a directory: pass --data.root DIR holding "
                f"train/<class>/ and test/<class>/ image folders"
            )
        for required in ("train", "test"):
            if not (base / required).is_dir():
                raise SymtrainError(
                    f"{str(base / required)!r} does not exist: create it with one subdirectory "
                    f"of images per class"
                )
        self.class_names = _class_dirs(base / "train")
        if not self.class_names:
            raise SymtrainError(
                f"{str(base / 'train')!r} has no class subdirectories: put each class's images "
                f"in train/<class>/"
            )
        for split in ("val", "test"):
            if not (base / split).is_dir():
                continue
            extra = sorted(set(_class_dirs(base / split)) - set(self.class_names))
            if extra:
                raise SymtrainError(
                    f"{str(base / split)!r} has classes {', '.join(extra)} that train does not: "
                    f"add them to train/ or remove them from {split}/"
                )
        train_images = {name: _images_in(base / "train" / name) for name in self.class_names}
        empty = [name for name, paths in train_images.items() if not paths]
        if empty:
            raise SymtrainError(
                f"class folders {', '.join(empty)} in {str(base / 'train')!r} hold no "
                f"{'/'.join(IMAGE_SUFFIXES)} images: add some or remove the folders"
            )
        self._first = train_images[self.class_names[0]][0]
        mode, (width, height) = self._probe(self._first)
        if width != height:
            raise SymtrainError(
                f"image {str(self._first)!r} is {width}x{height}: images must be square for "
                f"now, so crop or pad them to a square size"
            )
        if channels is None:
            channels = 1 if mode in _GRAY_MODES else 3
        if channels not in (1, 3):
            raise SymtrainError(f"data.channels is {channels}: pass 1 (grayscale) or 3 (RGB)")
        self.in_channels = channels
        self.image_size = height
        self.num_classes = len(self.class_names)
        self.mean = (0.5,) * channels
        self.std = (0.25,) * channels

    @staticmethod
    def _probe(path: Path) -> tuple[str, tuple[int, int]]:
        """The PIL mode and (width, height) of an image, read from its header."""
        try:
            with Image.open(path) as image:
                return image.mode, image.size
        except (OSError, SyntaxError, ValueError) as error:
            raise _unreadable(path, error) from error

    def _read_image(self, path: Path) -> torch.Tensor:
        """One image as uint8 (C, H, W), converted to the module's channels."""
        expected = (self.image_size, self.image_size)
        try:
            with Image.open(path) as image:
                if image.size != expected:
                    raise SymtrainError(
                        f"image {str(path)!r} is {image.size[0]}x{image.size[1]} but "
                        f"{str(self._first)!r} is {expected[0]}x{expected[1]}: resize all "
                        f"images to the same size"
                    )
                pixels = np.array(image.convert("L" if self.in_channels == 1 else "RGB"))
        except (OSError, SyntaxError, ValueError) as error:
            raise _unreadable(path, error) from error
        tensor = torch.from_numpy(pixels)  # (H, W) or (H, W, C)
        if tensor.ndim == 2:
            return tensor.unsqueeze(0)  # (1, H, W)
        return tensor.permute(2, 0, 1)  # (C, H, W)

    def _read_mask(self, image_path: Path, split: str) -> torch.Tensor:
        """The mask of one image as int64 (H, W) class indices."""
        path = Path(self.masks_root) / split / image_path.parent.name / f"{image_path.stem}.png"
        if not path.is_file():
            raise SymtrainError(
                f"mask {str(path)!r} of image {str(image_path)!r} does not exist: every image needs "
                f"a PNG mask under data.masks_root with the same relative path"
            )
        try:
            with Image.open(path) as image:
                pixels = np.array(image)
        except (OSError, SyntaxError, ValueError) as error:
            raise _unreadable(path, error) from error
        expected = (self.image_size, self.image_size)
        if pixels.ndim != 2 or pixels.shape != expected:
            raise SymtrainError(
                f"mask {str(path)!r} has shape {pixels.shape}: masks must be single-channel "
                f"{expected[0]}x{expected[1]} PNGs of class indices, like their images"
            )
        if pixels.max() > self.num_classes:
            raise SymtrainError(
                f"mask {str(path)!r} holds value {int(pixels.max())} but there are "
                f"{self.num_classes} classes: use 0 for background and 1..{self.num_classes} "
                f"for {', '.join(self.class_names)}"
            )
        return torch.from_numpy(pixels.astype(np.int64))

    def _load_split(self, split: str) -> Split:
        files: list[tuple[Path, int]] = []
        split_dir = Path(self.root) / split
        for label, class_name in enumerate(self.class_names):
            class_dir = split_dir / class_name
            if class_dir.is_dir():
                files.extend((path, label) for path in _images_in(class_dir))
        if not files:
            raise SymtrainError(
                f"{str(split_dir)!r} holds no {'/'.join(IMAGE_SUFFIXES)} images in its class "
                f"directories: add images to {split}/<class>/"
            )
        size = self.image_size
        images = torch.empty(len(files), self.in_channels, size, size, dtype=torch.uint8)
        for index, (path, _) in enumerate(files):
            images[index] = self._read_image(path)
        labels = torch.tensor([label for _, label in files], dtype=torch.int64)
        if self.masks_root is None:
            return Split(images, labels)
        masks = torch.stack([self._read_mask(path, split) for path, _ in files])  # (N, H, W)
        return Split(images, labels, masks)

    def load_splits(self) -> dict[str, Split]:
        splits = {split: self._load_split(split) for split in ("train", "test")}
        if (Path(self.root) / "val").is_dir():
            splits["val"] = self._load_split("val")
        return splits
