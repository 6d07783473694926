"""A folder of image files as users have them, written from images held in memory: every size
and aspect ratio, JPEG, PNG, BMP, WebP and TIFF, grayscale, RGB, palette, RGBA, CMYK and 16-bit
files, and JPEGs stored sideways with an EXIF orientation tag.

It turns the real digits into a folder that exercises everything :class:`ImageFolder` must read
(``python -m symtrain data digits-folder``), for the tests, the benchmark and a first try of
training on one's own images, offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

# (format, PIL mode, EXIF orientation or 0), taken in turn image by image.
KINDS: tuple[tuple[str, str, int], ...] = (
    ("JPEG", "RGB", 0),
    ("PNG", "L", 0),
    ("JPEG", "RGB", 6),  # stored turned a quarter counter-clockwise; the tag turns it back
    ("PNG", "P", 0),
    ("WEBP", "RGB", 0),
    ("JPEG", "CMYK", 0),
    ("PNG", "RGBA", 0),
    ("BMP", "RGB", 0),
    ("PNG", "I;16", 0),
    ("TIFF", "RGB", 0),
    ("JPEG", "L", 8),  # stored turned a quarter clockwise
    ("PNG", "LA", 0),
)
_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
# What the orientation tag's reader does (PIL's exif_transpose), undone when writing.
_STORED_TURN = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def photo(pixels: Tensor, kind: tuple[str, str, int], width: int, height: int) -> tuple[Image.Image, bytes]:
    """One uint8 image (C, H, W), centred on a ``width`` x ``height`` canvas (its longer side
    scaled to fit), in ``kind``'s mode; with the EXIF bytes its file needs (empty for none)."""
    _, mode, orientation = kind
    array = pixels.permute(1, 2, 0).numpy()
    source = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    scale = min(width / source.width, height / source.height)
    inner = source.resize((max(1, round(source.width * scale)), max(1, round(source.height * scale))))
    canvas = Image.new(source.mode, (width, height))
    canvas.paste(inner, ((width - inner.width) // 2, (height - inner.height) // 2))
    if mode == "I;16":  # 16-bit: 0..255 -> 0..65535
        wide = np.asarray(canvas.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(wide)  # uint16: mode I;16
    elif mode == "P":
        image = canvas.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    else:
        image = canvas.convert(mode)
    if not orientation:
        return image, b""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return image.transpose(_STORED_TURN[orientation]), exif.tobytes()


def write_photo_folder(
    root: str | Path,
    splits: dict[str, tuple[Tensor, Tensor]],
    class_names: Sequence[str],
    seed: int = 0,
    scale: tuple[float, float] = (1.0, 2.5),
    aspect: tuple[float, float] = (0.75, 1.33),
    prefix: str = "",
    kinds: Sequence[tuple[str, str, int]] = KINDS,
) -> int:
    """Write ``root/<split>/<class>/<index>.<ext>`` for every image of every split: each one
    enlarged by a random factor in ``scale``, on a canvas of a random aspect ratio in
    ``aspect``, in the next of ``kinds``.

    Args:
        root: the folder to write (its splits' directories must not exist yet).
        splits: per split name, uint8 images (N, C, H, W) and int64 labels (N,).
        class_names: the class folders' names, by label.
        seed: seeds the sizes.
        scale: range of the enlargement factors.
        aspect: range of the canvases' aspect ratios (width / height).
        prefix: starts every file name (so that several writes can share the folders).
        kinds: the (format, mode, EXIF orientation) taken in turn (default: every kind).

    Returns:
        The number of files written.

    Examples:
        >>> import tempfile
        >>> images = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8)
        >>> root = Path(tempfile.mkdtemp())
        >>> write_photo_folder(root, {"train": (images, torch.arange(12) % 2)}, ["a", "b"])
        12
        >>> sorted({path.suffix for path in root.rglob("*.*")})
        ['.bmp', '.jpg', '.png', '.tif', '.webp']
    """
    generator = torch.Generator().manual_seed(seed)
    written = 0
    for split, (images, labels) in splits.items():
        factors = torch.empty(len(images)).uniform_(*scale, generator=generator).tolist()
        ratios = torch.empty(len(images)).uniform_(*aspect, generator=generator).tolist()
        for index, (pixels, label) in enumerate(zip(images, labels.tolist(), strict=True)):
            side = pixels.shape[-1] * factors[index]
            width, height = (
                max(1, round(side * ratios[index] ** 0.5)),
                max(1, round(side / ratios[index] ** 0.5)),
            )
            kind = kinds[written % len(kinds)]
            image, exif = photo(pixels, kind, width, height)
            path = Path(root) / split / class_names[label] / f"{prefix}{index:06d}{_SUFFIX[kind[0]]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, format=kind[0], **({"exif": exif} if exif else {}))
            written += 1
    return written
