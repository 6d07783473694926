"""Synthetic polyomino images: the offline default dataset.

Each image shows one polyomino (a shape made of unit cells) at a random position, scale and
orientation. The class set contains chiral pairs (L/J, S/Z: mirror images that no rotation
maps onto each other) next to achiral shapes (I, O, T, X), so a model that is invariant to
reflections provably cannot separate some classes while a rotation-invariant one can. The
orientation protocol of the test split can differ from the training one, which measures
how well a model generalises to unseen orientations.

Everything is generated in a handful of vectorised torch operations, deterministically from a
seed, so the dataset needs no download and is identical on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

from symtrain.data.base import ImageDataModule, Split
from symtrain.data.images import TrainTransform
from symtrain.errors import SymtrainError

Orientation = Literal["upright", "rot90", "any"]


def check_orientations(train: str, test: str) -> None:
    """Raise a one-line error naming the choices if either protocol is not an :data:`Orientation`."""
    choices = ", ".join(get_args(Orientation))
    for arg, orientation in (("train_orientation", train), ("test_orientation", test)):
        if orientation not in get_args(Orientation):
            raise SymtrainError(f"data.{arg} is {orientation!r}: use one of {choices}")


# Cell grids, top row first: '#' is a filled cell. L/J and S/Z are chiral pairs.
SHAPES: dict[str, tuple[str, ...]] = {
    "I": ("####",),
    "O": ("##", "##"),
    "T": ("###", ".#."),
    "X": (".#.", "###", ".#."),
    "L": ("#.", "#.", "##"),
    "J": (".#", ".#", "##"),
    "S": (".##", "##."),
    "Z": ("##.", ".##"),
}

# Statistics are taken from a fixed sample, independent of the user's seed, so every seed of a
# configuration normalises identically.
_STATS_SAMPLES = 256
_STATS_SEED = 12345
_RENDER_BLOCK = 2048


def shape_radius(name: str) -> float:
    """Distance, in cells, from a shape's bounding-box centre to its farthest filled corner.

    A shape rotated about its bounding-box centre never leaves the disc of this radius.

    Examples:
        >>> round(shape_radius("O"), 4)
        1.4142
    """
    grid = SHAPES[name]
    height, width = len(grid), len(grid[0])
    return max(
        math.hypot(col + dx - width / 2, row + dy - height / 2)
        for row, line in enumerate(grid)
        for col, cell in enumerate(line)
        if cell == "#"
        for dx in (0, 1)
        for dy in (0, 1)
    )


def _cell_table(class_names: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
    """Stack the grids into one lookup table with a one-cell empty border.

    Returns the table (K, G + 2, G + 2) with each grid's top-left cell at (1, 1), and the grid
    heights and widths (K,), where G is the largest grid side.
    """
    grids = [SHAPES[name] for name in class_names]
    side = max(max(len(grid), len(grid[0])) for grid in grids)
    table = torch.zeros(len(grids), side + 2, side + 2)
    for index, grid in enumerate(grids):
        for row, line in enumerate(grid):
            for col, cell in enumerate(line):
                table[index, row + 1, col + 1] = float(cell == "#")
    heights = torch.tensor([float(len(grid)) for grid in grids])
    widths = torch.tensor([float(len(grid[0])) for grid in grids])
    return table, heights, widths


def render_shapes(
    labels: Tensor,
    angles: Tensor,
    centers: Tensor,
    cell_sizes: Tensor,
    image_size: int,
    class_names: Sequence[str] | None = None,
    supersample: int = 4,
) -> tuple[Tensor, Tensor]:
    """Render one anti-aliased polyomino per image, without noise.

    Each pixel is sampled at ``supersample`` x ``supersample`` points; every point is mapped
    by the inverse rotation into the shape's cell grid and looked up, and the hits are
    averaged. Angles that are multiples of 90 degrees use exact cosines, so a quarter-turn
    rendering about the image centre equals ``torch.rot90`` of the upright one, pixel for pixel.

    Args:
        labels: class indices into ``class_names``, int64 (N,).
        angles: counter-clockwise rotation in degrees, (N,).
        centers: (x, y) of each shape's bounding-box centre in pixels, x to the right and
            y down from the image's top-left corner, (N, 2).
        cell_sizes: side of one cell in pixels, (N,).
        image_size: side of the square images.
        class_names: the shapes ``labels`` index, names of :data:`SHAPES`; all by default.
        supersample: sub-pixel samples per pixel side.

    Returns:
        Coverage in [0, 1], float32 (N, H, W), and masks, int64 (N, H, W): label + 1 where a
        pixel is at least half covered, 0 elsewhere.

    Examples:
        >>> coverage, masks = render_shapes(
        ...     torch.tensor([1]), torch.tensor([0.0]), torch.tensor([[4.0, 4.0]]),
        ...     torch.tensor([2.0]), image_size=8)
        >>> coverage[0, 2:6, 2:6].sum().item(), masks.unique().tolist()
        (16.0, [0, 2])
    """
    names = list(SHAPES) if class_names is None else list(class_names)
    table, heights, widths = _cell_table(names)
    padded = table.shape[-1]
    largest = padded - 2
    num = labels.shape[0]

    radians = torch.deg2rad(angles.double())
    cos, sin = torch.cos(radians), torch.sin(radians)
    quarter = torch.remainder(angles.double(), 90.0) == 0
    cos = torch.where(quarter, cos.round(), cos)
    sin = torch.where(quarter, sin.round(), sin)
    # Per-image factors (N, 1, 1); dividing by the cell size here maps pixels to cells directly.
    cos_s = (cos / cell_sizes.double()).float().view(num, 1, 1)
    sin_s = (sin / cell_sizes.double()).float().view(num, 1, 1)
    half_w = (widths[labels] / 2).view(num, 1, 1)
    half_h = (heights[labels] / 2).view(num, 1, 1)
    # Flat offset of each image's grid in the table, plus the one-cell border.
    base = (labels * padded * padded + padded + 1).float().view(num, 1, 1)
    flat_table = table.flatten()

    pixels = torch.arange(image_size, dtype=torch.float32)
    hits = torch.zeros(num, image_size, image_size)
    # Blocks of images keep the temporaries near cache size, about twice as fast as one pass
    # over all images; much smaller blocks mean so many tiny parallel ops that the threads
    # stall whenever other processes compete for the cores.
    for start in range(0, num, _RENDER_BLOCK):
        block = slice(start, start + _RENDER_BLOCK)
        block_hits = hits[block]  # (B, H, W) view
        size = block_hits.shape[0]
        block_cos, block_sin = cos_s[block], sin_s[block]
        block_w, block_h, block_base = half_w[block], half_h[block], base[block]
        for offset_y in range(supersample):
            dy = pixels + (offset_y + 0.5) / supersample - centers[block, 1:2]  # (B, H)
            dy = dy.view(size, image_size, 1)
            for offset_x in range(supersample):
                dx = pixels + (offset_x + 0.5) / supersample - centers[block, 0:1]  # (B, W)
                dx = dx.view(size, 1, image_size)
                # Inverse rotation into cell coordinates; the border cell absorbs everything
                # outside the grid once clamped, so no separate bounds test is needed.
                col = dx * block_cos + block_w - dy * block_sin  # (B, H, W)
                row = dx * block_sin + block_h + dy * block_cos  # (B, H, W)
                col.floor_().clamp_(-1, largest)
                row.floor_().clamp_(-1, largest)
                index = row.mul_(padded).add_(col).add_(block_base).long()
                block_hits += flat_table.take(index)
    coverage = hits / supersample**2
    masks = torch.where(coverage >= 0.5, labels.view(num, 1, 1) + 1, 0)
    return coverage, masks


def sample_angles(num: int, orientation: Orientation, generator: torch.Generator) -> Tensor:
    """Draw ``num`` rotation angles in degrees for an orientation protocol.

    ``"upright"`` is always 0, ``"rot90"`` a uniform multiple of 90, ``"any"`` uniform in
    [0, 360).

    Examples:
        >>> angles = sample_angles(100, "rot90", torch.Generator().manual_seed(0))
        >>> sorted(angles.unique().tolist())
        [0.0, 90.0, 180.0, 270.0]
    """
    if orientation == "upright":
        return torch.zeros(num)
    if orientation == "rot90":
        return torch.randint(0, 4, (num,), generator=generator).float() * 90.0
    if orientation == "any":
        return torch.rand(num, generator=generator) * 360.0
    raise SymtrainError(f"unknown orientation {orientation!r}: use one of {', '.join(get_args(Orientation))}")


def generate_shapes(
    num: int,
    image_size: int,
    class_names: Sequence[str],
    orientation: Orientation,
    scale: tuple[float, float],
    noise: float,
    seed: int,
) -> Split:
    """Generate one split: balanced labels, random pose, noise, quantised to uint8.

    Labels cycle through the classes and are then shuffled, so class counts differ by at most
    one. Every shape lies fully inside the image at any angle: its centre keeps its bounding
    radius away from the borders.

    Args:
        num: number of images.
        image_size: side of the square images in pixels.
        class_names: names of :data:`SHAPES`, in label order.
        orientation: the orientation protocol, see :func:`sample_angles`.
        scale: range of the cell side as a fraction of ``image_size``.
        noise: standard deviation of additive gaussian noise on the [0, 1] scale.
        seed: seed of everything random in the split.

    Returns:
        A split with images uint8 (N, 1, H, W), labels int64 (N,) and masks int64 (N, H, W).

    Examples:
        >>> split = generate_shapes(6, 16, ["L", "J"], "any", (0.1, 0.15), 0.05, seed=0)
        >>> split.images.shape, split.labels.tolist().count(0)
        (torch.Size([6, 1, 16, 16]), 3)
    """
    generator = torch.Generator().manual_seed(seed)
    num_classes = len(class_names)
    labels = (torch.arange(num) % num_classes)[torch.randperm(num, generator=generator)]
    angles = sample_angles(num, orientation, generator)
    low, high = scale
    cell_sizes = (low + (high - low) * torch.rand(num, generator=generator)) * image_size
    radii = torch.tensor([shape_radius(name) for name in class_names])[labels] * cell_sizes
    # Centre uniform in [radius, image_size - radius] along each axis.
    free = (image_size - 2 * radii).unsqueeze(1)  # (N, 1)
    centers = radii.unsqueeze(1) + free * torch.rand(num, 2, generator=generator)  # (N, 2)
    coverage, masks = render_shapes(labels, angles, centers, cell_sizes, image_size, class_names)
    noisy = coverage + noise * torch.randn(coverage.shape, generator=generator)
    images = (noisy.clamp(0, 1) * 255).round().to(torch.uint8).unsqueeze(1)  # (N, 1, H, W)
    return Split(images, labels, masks)


class SyntheticShapes(ImageDataModule):
    """Generated polyomino images with chiral pairs, per-pixel masks and orientation protocols.

    One bright shape (value 1) on a dark background per image, at a random position and
    scale, rotated according to the split's orientation protocol: ``"upright"`` (0 degrees),
    ``"rot90"`` (a random multiple of 90) or ``"any"`` (uniform in [0, 360)). Train and val
    follow ``train_orientation``, test follows ``test_orientation``; training upright and
    testing on ``"any"`` measures generalisation to unseen rotations. The classes include the
    chiral pairs L/J and S/Z, which only a model that is not reflection-invariant can tell
    apart. :attr:`splits` also carries per-pixel masks (0 background, label + 1 on the shape).

    Each split is generated from its own seed derived from ``seed``, so train, val and test
    hold different images and the same ``seed`` gives bit-identical tensors.
    ``mean``/``std`` come from a small fixed sample generated at construction, so they are
    known before :meth:`setup` and identical for every ``seed``.

    Args:
        num_train: training images.
        num_val: validation images.
        num_test: test images.
        image_size: side of the square images in pixels.
        classes: names of the shapes to use, in label order (subset of :data:`SHAPES`:
            I, O, T, X, L, J, S, Z); all of them by default.
        train_orientation: orientation protocol of the train and val splits.
        test_orientation: orientation protocol of the test split.
        scale: range of a cell's side as a fraction of ``image_size``, so the defaults look
            the same at every resolution (at 32 pixels, cells of 3.5 to 5.4 pixels).
        noise: standard deviation of additive gaussian pixel noise on the [0, 1] scale.
        seed: seed of the generated data.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        on_device: keep the splits on the GPU when training on one (see ImageDataModule).
        train_transform: the base training pipeline (``none``, ``pad_crop``, ``resized_crop``;
            see ImageDataModule).
        train_flip: random horizontal flips in the base pipeline (recorded with the run).

    Examples:
        >>> data = SyntheticShapes(num_train=8, num_val=4, num_test=4, image_size=16,
        ...                        classes=["L", "J"], test_orientation="any")
        >>> data.num_classes, data.class_names, data.in_channels
        (2, ['L', 'J'], 1)
        >>> data.setup()
        >>> data.splits["train"].images.shape, data.splits["test"].masks.shape
        (torch.Size([8, 1, 16, 16]), torch.Size([4, 16, 16]))
    """

    name = "shapes"
    has_masks = True

    examples = ({"num_train": 16, "num_val": 8, "num_test": 8, "image_size": 29},)

    def __init__(
        self,
        num_train: int = 8000,
        num_val: int = 1000,
        num_test: int = 2000,
        image_size: int = 32,
        classes: list[str] | None = None,
        train_orientation: Orientation = "upright",
        test_orientation: Orientation = "upright",
        scale: tuple[float, float] = (0.11, 0.17),
        noise: float = 0.05,
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        on_device: bool = True,
        train_transform: TrainTransform = "none",
        train_flip: bool = False,
    ) -> None:
        super().__init__(batch_size, 0.1, num_workers, 0, on_device, train_transform, train_flip)
        for arg, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value < 1:
                raise SymtrainError(f"data.{arg} is {value}: pass a positive number of images")
        names = list(SHAPES) if classes is None else list(classes)
        unknown = [name for name in names if name not in SHAPES]
        if unknown:
            raise SymtrainError(
                f"unknown shape class {', '.join(map(repr, unknown))} in data.classes: "
                f"choose from {', '.join(SHAPES)}"
            )
        if len(set(names)) != len(names) or not names:
            raise SymtrainError(
                f"data.classes {names} must name at least one shape, each once: "
                f"choose from {', '.join(SHAPES)}"
            )
        check_orientations(train_orientation, test_orientation)
        low, high = scale
        # A shape of this radius must fit inside the image at every angle.
        max_scale = 0.5 / max(shape_radius(name) for name in names)
        if not 0 < low <= high <= max_scale:
            raise SymtrainError(
                f"data.scale {tuple(scale)} is invalid for shapes {', '.join(names)}: "
                f"pass 0 < low <= high <= {max_scale:.3f} so every shape fits the image"
            )
        if noise < 0:
            raise SymtrainError(f"data.noise is {noise}: pass a standard deviation >= 0")
        if image_size < 4:
            raise SymtrainError(f"data.image_size is {image_size}: pass at least 4 pixels")

        self.num_train = num_train
        self.num_val = num_val
        self.num_test = num_test
        self.image_size = image_size
        self.class_names = names
        self.num_classes = len(names)
        self.in_channels = 1
        self.train_orientation = train_orientation
        self.test_orientation = test_orientation
        self.scale = (float(low), float(high))
        self.noise = noise
        self.seed = seed

        sample = self._generate(_STATS_SAMPLES, train_orientation, _STATS_SEED)
        pixels = sample.images.float() / 255  # (N, 1, H, W)
        self.mean = (pixels.mean().item(),)
        self.std = (pixels.std().item(),)

    def _generate(self, num: int, orientation: Orientation, seed: int) -> Split:
        return generate_shapes(
            num, self.image_size, self.class_names, orientation, self.scale, self.noise, seed
        )

    def load_splits(self) -> dict[str, Split]:
        # One independent seed per split, all drawn from the user's seed.
        seeds = torch.randint(0, 2**62, (3,), generator=torch.Generator().manual_seed(self.seed))
        train_seed, val_seed, test_seed = (int(s) for s in seeds)
        return {
            "train": self._generate(self.num_train, self.train_orientation, train_seed),
            "val": self._generate(self.num_val, self.train_orientation, val_seed),
            "test": self._generate(self.num_test, self.test_orientation, test_seed),
        }
