"""What the folder tests share (``test_folder*.py``, ``test_shards.py``, ``test_measure_zoo.py``):
real digits as a folder of photos, a photo-like image and a folder of it, and the shifts
between two images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from symtrain.data import MNIST5k
from symtrain.data.photos import write_photo_folder
from symtrain.metrics.subset import stratified_subset

ROOT = Path(__file__).resolve().parents[1]


def digits_folder(root: Path, per_split: int = 60, seed: int = 0) -> MNIST5k:
    """Real digits as image files of every kind: ``per_split`` per split."""
    digits = MNIST5k(root=str(ROOT / "data"))
    digits.setup()
    splits = {}
    for name in ("train", "val", "test"):
        chosen = stratified_subset(digits.splits[name].labels, per_split, seed)  # every class, from 10 on
        splits[name] = (digits.splits[name].images[chosen], digits.splits[name].labels[chosen])
    write_photo_folder(root, splits, digits.class_names, seed=seed)
    return digits


def shifts_of(moved: torch.Tensor, original: torch.Tensor) -> set[tuple[int, int]]:
    """The integer shifts (dy, dx) with zero fill that take ``original`` (C, S, S) to ``moved``."""
    size = original.shape[-1]
    found = set()
    padded = torch.nn.functional.pad(original, (4, 4, 4, 4))
    for dy in range(-4, 5):
        for dx in range(-4, 5):
            window = padded[:, 4 - dy : 4 - dy + size, 4 - dx : 4 - dx + size]
            if torch.equal(window, moved):
                found.add((dy, dx))
    return found


def gradient_photo(width: int = 40, height: int = 30) -> Image.Image:
    """A photo-like RGB image: smooth gradients (a resize's interpolation shows) inside a
    3-pixel magenta border (a crop shows whether it is kept)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 6, y * 8, (x * y) % 256], axis=-1).astype(np.uint8)
    for edge in (np.s_[:3], np.s_[-3:], np.s_[:, :3], np.s_[:, -3:]):
        rgb[edge] = (250, 20, 200)
    return Image.fromarray(rgb)


def photo_folder(root: Path) -> Path:
    """One class, one lossless photo in ``train`` and ``test``; returns the test photo's path."""
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        gradient_photo().save(root / split / "a" / "photo.png")
    return root / "test" / "a" / "photo.png"
