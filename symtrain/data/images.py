"""Image files as the model sees them, and the base (non-symmetry) training pipeline.

Decoding is torchvision.io's for JPEGs and PIL's for the rest (PNG, BMP, WebP, TIFF, ...), with
the EXIF orientation applied and every mode brought to the run's channels; resizing and
cropping are torchvision's (``transforms.v2``) for one decoded image in a DataLoader worker,
and kornia's for a batch already held in memory.

The base pipeline is what training images go through *before* a symmetry strategy sees them:
the papers' random crops (CIFAR's pad-4 crop, ImageNet's random resized crop) and, only when
asked for, horizontal flips. A flip is one of the symmetries symtrain measures, so it is never
implied: it is a named option, recorded with the run.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from symtrain.errors import SymtrainError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
JPEG_SUFFIXES = (".jpg", ".jpeg")
# PIL modes without colour; everything else is treated as colour.
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# Integer modes wider than 8 bits (16-bit PNGs and TIFFs open as one of these).
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
TrainTransform = Literal["none", "pad_crop", "resized_crop"]
Interpolation = Literal["bilinear", "bicubic", "nearest"]
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CROP_PADDING = 4  # CIFAR's pad-and-crop (He et al. 2016; Zhang 2019)


def check_evaluation(crop_fraction: float | None, interpolation: str | None) -> None:
    """Refuse, in one line each, a ``crop_fraction`` outside (0, 1] and an unknown ``interpolation``
    (the data modules' options of those names)."""
    if crop_fraction is not None and not (isinstance(crop_fraction, (int, float)) and 0 < crop_fraction <= 1):
        raise SymtrainError(
            f"data.crop_fraction is {crop_fraction!r}: pass a share in (0, 1] of the resized image kept by "
            f"the centre crop (timm's crop_pct, e.g. 0.875), or null for 1 (resize to the image size)"
        )
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise SymtrainError(
            f"data.interpolation is {interpolation!r}: pass one of {', '.join(INTERPOLATIONS)}, or null "
            f"for bilinear"
        )


def resized_side(size: int, crop_fraction: float | None = None) -> int:
    """The side the evaluation view resizes an image's shorter side to, before its centre
    ``size`` x ``size`` crop: ``size`` itself, or with ``crop_fraction`` (timm's ``crop_pct``)
    ``floor(size / crop_fraction)``, as timm's ``transforms_imagenet_eval`` rounds it.

    Examples:
        >>> resized_side(224), resized_side(224, 0.875), resized_side(224, 0.9), resized_side(16, 1.0)
        (224, 256, 248, 16)
    """
    return size if crop_fraction is None else math.floor(size / crop_fraction)


class UnreadableImage(SymtrainError):
    """An image file that cannot be decoded (truncated, empty, or not an image at all)."""


def unreadable(path: str | Path, error: BaseException) -> UnreadableImage:
    reason = " ".join(str(error).split()) or type(error).__name__
    return UnreadableImage(
        f"cannot read image {str(path)!r} ({reason}): replace or delete the file, or pass "
        f"--data.skip_unreadable true to leave such files out (counted in summary.json)"
    )


def _pixels(image: Image.Image, channels: int) -> np.ndarray:
    """The image as uint8 (H, W) or (H, W, 3). PIL's own conversion of the wide modes clips
    (16-bit values to 255, floats to 0 or 1), so they are scaled here, by what the mode holds
    rather than by the image's own values (which would brighten a dark image): integer modes
    from 16 bits (0..65535; 32-bit ``I`` files are read as 16-bit and clipped above), float
    ``F`` images from [0, 1]."""
    if image.mode in _WIDE_MODES or image.mode == "F":
        wide = np.asarray(image, dtype=np.float64)
        scaled = wide * 255.0 if image.mode == "F" else wide / 257.0
        gray = scaled.round().clip(0, 255).astype(np.uint8)
        return gray if channels == 1 else np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
    return np.array(image.convert("L" if channels == 1 else "RGB"))


def read_image(path: str | Path, channels: int, encoded: bytes | None = None) -> Tensor:
    """Decode one image file to uint8 (C, H, W) with ``channels`` channels (1 or 3), upright
    (EXIF orientation applied), whatever its format and mode (grayscale, RGB, palette, RGBA,
    CMYK, 16-bit); an alpha channel is dropped, as torchvision's readers drop it. ``encoded``:
    the file's bytes, already read (from a shard); ``path`` then only names it.

    JPEGs are decoded by torchvision.io (libjpeg-turbo, without PIL's image objects: the same
    pixels, about 1.6x faster); every other format, and any file torchvision refuses, by PIL.

    Raises:
        UnreadableImage: naming the file, when it cannot be decoded (truncated, empty, not an image).

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "wide.png"
        >>> Image.new("RGB", (5, 3), (255, 0, 0)).save(path)
        >>> read_image(path, 3).shape, read_image(path, 1)[0, 0, 0].item()  # (C, H, W); red's luma
        (torch.Size([3, 3, 5]), 76)
    """
    if str(path).lower().endswith(JPEG_SUFFIXES):
        from torchvision.io import ImageReadMode, decode_jpeg, read_file

        mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
        try:
            data = (
                read_file(str(path))
                if encoded is None
                else torch.frombuffer(bytearray(encoded), dtype=torch.uint8)
            )
            return decode_jpeg(data, mode=mode, apply_exif_orientation=True)  # (C, H, W)
        except RuntimeError:
            pass  # broken, or not a JPEG after all: PIL decodes it or says why, in its words
    try:
        with Image.open(path if encoded is None else io.BytesIO(encoded)) as image:
            ImageOps.exif_transpose(image, in_place=True)
            pixels = _pixels(image, channels)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise unreadable(path, error) from error
    tensor = torch.from_numpy(pixels)
    # (H, W, C) viewed as (C, H, W), not copied: torch's uint8 transpose copy costs more than the
    # decoding, and the resize that follows prefers this (channels-last) layout.
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)


@dataclass(frozen=True)
class BasePipeline:
    """The training images' base transformation, before any symmetry strategy.

    Args:
        train_transform: ``none`` (the evaluation view: shorter side resized to the image size,
            centre crop), ``pad_crop`` (that view, zero-padded by 4 pixels and randomly cropped
            back: CIFAR's recipe) or ``resized_crop`` (torchvision's ``RandomResizedCrop``: a
            random 8-100% area and 3/4-4/3 aspect ratio, resized to the image size: ImageNet's).
        flip: also flip each training image horizontally with probability 1/2. A flip is a
            symmetry symtrain measures; a run trained with it says so.

    Examples:
        >>> BasePipeline().name, BasePipeline("pad_crop", flip=True).name
        ('none', 'pad_crop+flip')
        >>> images = torch.randint(0, 256, (2, 1, 6, 6), dtype=torch.uint8)
        >>> BasePipeline("pad_crop").batch_transform()(images)[0].shape
        torch.Size([2, 1, 6, 6])
    """

    train_transform: TrainTransform = "none"
    flip: bool = False

    @property
    def name(self) -> str:
        """What training saw: ``none``, ``pad_crop``, ``resized_crop``, with ``+flip`` when flipped."""
        parts = [self.train_transform] if self.train_transform != "none" or not self.flip else []
        return "+".join([*parts, "flip"] if self.flip else parts)

    def batch_transform(self) -> Callable[..., tuple[Tensor, Tensor | None]] | None:
        """For uint8 batches (B, C, S, S) held in memory at the final size: kornia, with one
        random draw per image, on whatever device the batch is on; masks (B, H, W) follow their
        images (nearest neighbour). None when training images are used as they are."""
        if self.train_transform == "none" and not self.flip:
            return None
        return _KorniaBatch(self)

    def image_transform(
        self,
        size: int,
        train: bool,
        resize: bool = True,
        crop_fraction: float | None = None,
        interpolation: Interpolation | None = None,
    ) -> Callable[..., object]:
        """For one decoded image (C, H, W) (and its mask): torchvision's v2 pipeline to ``size`` x
        ``size``. Evaluation resizes the shorter side to ``size`` and crops the centre (``resize``
        false: the image already is ``size`` x ``size``); ``train`` adds the random steps, with
        ``resized_crop`` cropping the original image rather than the evaluation view.

        Args:
            size: side S of the square images made.
            train: add the pipeline's random training steps.
            resize: resize (and centre-crop) the images; false: they already are S x S.
            crop_fraction: the share of the resized image's shorter side that the evaluation
                centre crop keeps (timm's ``crop_pct``): the shorter side is resized to
                ``floor(S / crop_fraction)`` (:func:`resized_side`), then the centre S x S is
                cropped. None: 1 (resized to S).
            interpolation: the resizes' interpolation (torchvision's ``InterpolationMode``,
                antialiased), ``resized_crop``'s included; None: bilinear. Masks are always
                resized by nearest neighbour.

        Examples:
            >>> image = torch.arange(40 * 30, dtype=torch.uint8).reshape(1, 30, 40)
            >>> BasePipeline().image_transform(16, False, crop_fraction=0.5)(image).shape
            torch.Size([1, 16, 16])
        """
        from torchvision.transforms import v2

        mode = v2.InterpolationMode((interpolation or "bilinear").lower())
        if train and self.train_transform == "resized_crop":
            steps: list[object] = [
                v2.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=mode, antialias=True)
            ]
        else:
            steps = []
            if resize:
                side = resized_side(size, crop_fraction)
                steps = [v2.Resize(side, interpolation=mode, antialias=True), v2.CenterCrop(size)]
            if train and self.train_transform == "pad_crop":
                steps.append(v2.RandomCrop(size, padding=CROP_PADDING))
        if train and self.flip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        return v2.Compose(steps) if steps else v2.Identity()


class _KorniaBatch:
    """The base pipeline over uint8 batches at their own size (masks with them), with kornia's
    per-image random draws: one ``AugmentationSequential`` per image size and mask use."""

    def __init__(self, pipeline: BasePipeline) -> None:
        self.pipeline = pipeline
        self._built: dict[tuple[int, int, bool], object] = {}

    def _sequence(self, size: tuple[int, int], masks: bool) -> object:
        key = (*size, masks)
        if key not in self._built:
            import kornia.augmentation as K

            steps = []
            if self.pipeline.train_transform == "pad_crop":
                steps.append(K.RandomCrop(size, padding=CROP_PADDING, p=1.0))
            elif self.pipeline.train_transform == "resized_crop":
                steps.append(K.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)))
            if self.pipeline.flip:
                steps.append(K.RandomHorizontalFlip(p=0.5))
            keys = ["input", "mask"] if masks else ["input"]
            self._built[key] = K.AugmentationSequential(*steps, data_keys=keys)
        return self._built[key]

    def __call__(self, images: Tensor, masks: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        sequence = self._sequence(tuple(images.shape[-2:]), masks is not None)
        floats = images.float()  # uint8 (B, C, H, W) -> floats in 0..255: crops and flips stay exact
        if masks is None:
            return sequence(floats).round_().clamp_(0, 255).to(torch.uint8), None
        moved, moved_masks = sequence(floats, masks[:, None].float())  # masks (B, H, W) -> (B, 1, H, W)
        return moved.round_().clamp_(0, 255).to(torch.uint8), moved_masks[:, 0].round().to(masks.dtype)
