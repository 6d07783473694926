"""Folders of images as users have them: every format, mode, size and orientation; ImageNet's
layout; statistics; memory or streaming; the base training pipeline; bad files. The evaluation
view a pretrained model's data config asks for: ``test_folder_evaluation.py``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from folder_helpers import digits_folder, shifts_of
from PIL import Image

from symtrain.cli import main
from symtrain.data import ImageFolder
from symtrain.data.base import Split
from symtrain.data.files import FileSplit
from symtrain.data.images import BasePipeline, read_image
from symtrain.data.photos import KINDS, photo
from symtrain.errors import SymtrainError
from symtrain.metrics.subset import stratified_subset

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def pattern(channels: int = 3) -> torch.Tensor:
    """An asymmetric uint8 test card (C, 12, 16): a bright block at the top left, a mid-grey one
    at the bottom right, so that every quarter turn and flip of it is told apart."""
    card = torch.full((channels, 12, 16), 30, dtype=torch.uint8)
    card[:, 1:5, 1:7] = 230
    card[:, 8:11, 11:15] = 140
    return card


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: f"{kind[0]}-{kind[1]}-exif{kind[2]}")
def test_every_format_and_mode_decodes_upright_in_the_runs_channels(kind: tuple, tmp_path: Path) -> None:
    card = pattern()
    image, exif = photo(card, kind, 16, 12)
    path = tmp_path / f"card.{kind[0].lower()}"
    image.save(path, format=kind[0], **({"exif": exif} if exif else {}))
    if kind[2]:  # stored sideways: only the EXIF tag makes it upright
        with Image.open(path) as stored:
            assert stored.size == (12, 16)
    gray = card[:1].float()
    for channels in (1, 3):
        decoded = read_image(path, channels)
        assert decoded.dtype == torch.uint8 and decoded.shape == (channels, 12, 16)
        error = (decoded.float().mean(dim=0) - gray[0]).abs().mean()
        assert error < (6 if kind[0] in ("JPEG", "WEBP") else 1), (kind, channels, error)


def test_sixteen_bit_and_float_images_are_scaled_by_their_mode_not_clipped(tmp_path: Path) -> None:
    wide = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert read_image(tmp_path / "wide.png", 1)[0, 0].tolist() == [0, 128, 255]
    assert read_image(tmp_path / "wide.png", 3)[:, 0, 2].tolist() == [255, 255, 255]
    dark = np.array([[0, 255, 2570]], dtype=np.uint16)  # a dark 16-bit image stays dark
    Image.fromarray(dark).save(tmp_path / "dark.png")
    assert read_image(tmp_path / "dark.png", 1)[0, 0].tolist() == [0, 1, 10]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "float.tif")
    assert read_image(tmp_path / "float.tif", 1)[0, 0].tolist() == [0, 128, 255]


def test_a_folder_of_every_size_and_kind_is_brought_to_one_size(tmp_path: Path) -> None:
    digits = digits_folder(tmp_path / "photos", per_split=24)
    data = ImageFolder(str(tmp_path / "photos"), image_size=29, channels=1)
    data.setup()
    assert data.storage == "memory" and data.image_size == 29
    assert {name: len(split) for name, split in data.splits.items()} == {"train": 24, "val": 24, "test": 24}
    test = data.splits["test"]
    assert test.images.shape == (24, 1, 29, 29) and test.images.dtype == torch.uint8
    written = digits.splits["test"].labels[stratified_subset(digits.splits["test"].labels, 24)]
    assert sorted(test.labels.tolist()) == sorted(written.tolist())
    with pytest.raises(SymtrainError, match="pass --data.image_size SIZE"):
        ImageFolder(str(tmp_path / "photos"))


def test_imagenet_layout_without_test_uses_val_and_says_so(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for wnid, level in (("n01440764", 60), ("n01443537", 200)):
            folder = tmp_path / split / wnid
            folder.mkdir(parents=True)
            for index in range(3):
                Image.new("RGB", (40 + 7 * index, 30), (level, level, level)).save(
                    folder / f"{wnid}_{index}.JPEG"
                )
    data = ImageFolder(str(tmp_path), image_size=24)
    assert data.class_names == ["n01440764", "n01443537"] and data.test_split == "val"
    data.setup()
    assert data.splits["test"] is data.splits["val"] and len(data.splits["train"]) == 6
    assert data.describe()["test_split"] == "val"


def test_statistics_are_estimated_once_and_cached_beside_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digits_folder(tmp_path, per_split=30)
    data = ImageFolder(str(tmp_path), image_size=20, channels=1, storage="memory")
    data.setup()
    pixels = data.splits["train"].images.float() / 255  # all 30 training files (val is its own folder)
    assert data.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-4)
    assert data.std[0] == pytest.approx(pixels.std().item(), abs=1e-3)
    cache = json.loads((tmp_path / ".symtrain-stats.json").read_text())
    assert [entry["mean"] for entry in cache.values()] == [list(data.mean)]

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(FileSplit, "decode", no_decoding)
    assert ImageFolder(str(tmp_path), image_size=20, channels=1).mean == data.mean  # from the cache
    monkeypatch.undo()
    changed = next((tmp_path / "train").rglob("*.png"))
    Image.new("L", (30, 30), 255).save(changed)  # another image: another key, estimated again
    assert ImageFolder(str(tmp_path), image_size=20, channels=1).mean != data.mean
    given = ImageFolder(str(tmp_path), image_size=20, channels=1, mean=[0.5], std=[0.2])
    assert (given.mean, given.std) == ((0.5,), (0.2,))
    with pytest.raises(SymtrainError, match="need 1 value"):
        ImageFolder(str(tmp_path), image_size=20, channels=1, mean=[0.5, 0.5], std=[0.2, 0.2])


def test_streaming_delivers_what_memory_holds(tmp_path: Path) -> None:
    digits_folder(tmp_path, per_split=40)
    memory = ImageFolder(str(tmp_path), image_size=25, channels=1, storage="memory", batch_size=16)
    stream = ImageFolder(
        str(tmp_path), image_size=25, channels=1, storage="stream", batch_size=16, num_workers=0
    )
    auto = ImageFolder(str(tmp_path), image_size=25, channels=1, memory_budget_mb=0.01)
    assert (memory.storage, stream.storage, auto.storage) == ("memory", "stream", "stream")
    for data in (memory, stream):
        data.setup()
    assert isinstance(stream.splits["test"], FileSplit) and isinstance(memory.splits["test"], Split)
    for name, loader in (("val", "val_dataloader"), ("test", "test_dataloader")):
        for held, streamed in zip(getattr(memory, loader)(), getattr(stream, loader)(), strict=True):
            assert all(torch.equal(a, b) for a, b in zip(held, streamed, strict=True)), name
        assert torch.equal(memory.splits[name].sample(12, 0).images, stream.splits[name].sample(12, 0).images)
    sizes = [len(batch[1]) for batch in stream.train_dataloader()]
    assert sum(sizes) == len(stream.splits["train"]) == len(memory.splits["train"])


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_pad_crop_shifts_each_training_image_by_up_to_four_pixels(storage: str, tmp_path: Path) -> None:
    digits_folder(tmp_path, per_split=32)
    data = ImageFolder(
        str(tmp_path), image_size=21, channels=1, storage=storage, train_transform="pad_crop",
        batch_size=32, num_workers=0, val_fraction=0.0,
    )  # fmt: skip
    data.setup()
    plain = ImageFolder(str(tmp_path), image_size=21, channels=1, storage="memory", batch_size=32)
    plain.setup()
    images, labels = next(iter(data.train_dataloader()))
    originals = {int(label): [] for label in labels}
    for image, label in zip(plain.splits["train"].images, plain.splits["train"].labels, strict=True):
        originals.setdefault(int(label), []).append(image)
    shifts = []
    for image, label in zip(images, labels.tolist(), strict=True):
        found = set().union(*(shifts_of(image, original) for original in originals[label]))
        assert found, "every training image is one of its class's images, shifted"
        shifts.append(found)
    assert len({frozenset(found) for found in shifts}) > 5  # one random draw per image
    assert torch.equal(next(iter(data.val_dataloader()))[0], next(iter(plain.val_dataloader()))[0])


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_flips_only_when_asked_and_masks_follow_their_images(storage: str, tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / "images" / split / "card").mkdir(parents=True)
        (tmp_path / "masks" / split / "card").mkdir(parents=True)
        for index in range(24):
            Image.fromarray(pattern(1)[0].numpy()).save(tmp_path / "images" / split / "card" / f"{index}.png")
            mask = (pattern(1)[0] > 200).to(torch.uint8).numpy()  # the bright block is class 1
            Image.fromarray(mask).save(tmp_path / "masks" / split / "card" / f"{index}.png")
    settings = dict(root=str(tmp_path / "images"), masks_root=str(tmp_path / "masks"), image_size=12,
                    storage=storage, num_workers=0, batch_size=24, val_fraction=0.1)  # fmt: skip
    for flip in (False, True):
        data = ImageFolder(**settings, train_flip=flip, mean=[0.5], std=[0.2])
        data.with_masks = True
        data.setup()
        images, _, masks = next(iter(data.train_dataloader()))
        reference = next(iter(data.test_dataloader()))[0][0]  # the evaluation view: never flipped
        is_flipped = [torch.equal(image, reference.flip(-1)) for image in images]
        assert all(torch.equal(image, reference) or f for image, f in zip(images, is_flipped, strict=True))
        assert any(is_flipped) == flip and (not flip or not all(is_flipped))
        # Each mask marks its own image's bright block, flipped or not.
        assert torch.equal(masks.bool(), images[:, 0] > 200)


def test_unreadable_files_are_named_or_skipped_and_counted(tmp_path: Path) -> None:
    digits_folder(tmp_path, per_split=12)
    jpeg = next((tmp_path / "train").rglob("*.jpg"))
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])  # truncated
    empty = tmp_path / "test" / "3" / "empty.png"
    empty.write_bytes(b"")
    (tmp_path / "test" / "3" / "notes.jpg").write_text("not an image")
    for storage in ("memory", "stream"):
        data = ImageFolder(
            str(tmp_path), image_size=16, channels=1, storage=storage, num_workers=0, mean=[0.1], std=[0.3]
        )
        with pytest.raises(SymtrainError, match="cannot read image") as raised:
            data.setup()
            for loader in (data.train_dataloader(), data.test_dataloader()):
                list(loader)
        assert "\n" not in str(raised.value) and "--data.skip_unreadable true" in str(raised.value)
        skipping = ImageFolder(
            str(tmp_path), image_size=16, channels=1, storage=storage, num_workers=0, skip_unreadable=True,
            val_fraction=0.0, mean=[0.1], std=[0.3],
        )  # fmt: skip
        skipping.setup()
        seen = sum(len(batch[1]) for name in ("train", "val", "test")
                   for batch in getattr(skipping, f"{name}_dataloader")())  # fmt: skip
        # In memory the three bad files are left out; streamed, each gives way to the next
        # readable file of its split, so that batches stay full (and DDP's steps equal).
        assert seen == (11 + 12 + 12 if storage == "memory" else 12 + 12 + 14)
        assert skipping.describe()["skipped_unreadable"] == 3


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda root: (root / "val" / "7").mkdir(), "class folders 7 in .* hold no"),
        (
            lambda root: shutil.copytree(root / "val" / "7", root / "val" / "zebra"),
            "classes zebra that train does not",
        ),
        (lambda root: shutil.rmtree(root / "train"), "train' does not exist"),
    ],
)
def test_layout_mistakes_are_one_line(make, message: str, tmp_path: Path) -> None:  # noqa: ANN001
    digits_folder(tmp_path, per_split=12)
    if (tmp_path / "val" / "7").exists() and "hold no" in message:
        shutil.rmtree(tmp_path / "val" / "7")
    make(tmp_path)
    with pytest.raises(SymtrainError, match=message) as raised:
        ImageFolder(str(tmp_path), image_size=16)
    assert "\n" not in str(raised.value)


def test_a_folder_this_user_cannot_read_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digits_folder(tmp_path, per_split=12)
    readable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path and readable(path, mode))
    with pytest.raises(SymtrainError, match="cannot be read: give this user read access"):
        ImageFolder(str(tmp_path), image_size=16)


def test_images_smaller_than_the_backbones_stride_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digits_folder(tmp_path / "photos", per_split=12)
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", QUICKSTART, "--data", "ImageFolder", f"--data.root={tmp_path / 'photos'}",
              "--data.image_size=6", "--model.backbone.width=4", "--run.wandb=false",
              f"--trainer.default_root_dir={runs}"])  # fmt: skip
    err = capsys.readouterr().err
    assert exited.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "data.image_size 6 is too small for StandardCNN (total stride 8)" in err
    assert not runs.exists() or not any(runs.iterdir())


def test_the_base_pipeline_names_what_training_saw() -> None:
    assert [BasePipeline(t, f).name for t in ("none", "pad_crop") for f in (False, True)] == [
        "none", "flip", "pad_crop", "pad_crop+flip"
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("storage,size", [("stream", 29), ("memory", 28)])
def test_a_folder_of_photos_trains_tests_predicts_reloads_resumes_and_reports(
    storage: str, size: int, tmp_path: Path
) -> None:
    """Real digits as files of every kind, with one flag for their size: the whole life of a run."""
    import symtrain
    from symtrain.__main__ import main as symtrain_main

    digits_folder(tmp_path / "photos", per_split=40)
    runs = tmp_path / "runs"
    fit = [
        "fit", "--config", QUICKSTART, "--config", str(ROOT / "configs" / "data" / "folder.yaml"),
        f"--data.root={tmp_path / 'photos'}", f"--data.image_size={size}", "--data.channels=1",
        f"--data.storage={storage}", "--data.train_transform=pad_crop", "--data.train_flip=true",
        "--data.batch_size=16", "--model.backbone.width=4", "--metrics.num_samples=16",
        "--metrics.test_num_samples=20", "--run.wandb=false", "--run.quiet=true",
        f"--trainer.default_root_dir={runs}", "--run.name=photos",
    ]  # fmt: skip
    main([*fit, "--trainer.max_epochs=2"])
    run_dir = runs / "photos"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["base_pipeline"] == "pad_crop+flip"
    assert summary["data"]["storage"] == storage and summary["data"]["image_size"] == size
    assert summary["data"]["sizes"] == {"train": 40, "val": 40, "test": 40}

    net = symtrain.load_model(run_dir)  # the network alone, normalising as it trained
    data = ImageFolder(str(tmp_path / "photos"), image_size=size, channels=1, storage="memory")
    data.setup()
    images = data.splits["test"].images.float() / 255
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    main(
        [
            "predict",
            "--config",
            str(run_dir / "config.yaml"),
            f"--ckpt_path={checkpoint}",
            "--run.name=predicted",
        ]
    )
    predictions = torch.load(runs / "predicted" / "predictions.pt")
    with torch.no_grad():
        assert torch.allclose(predictions["logits"], net(images), atol=1e-5)  # same files, same view
    main(["test", "--config", str(run_dir / "config.yaml"), f"--ckpt_path={checkpoint}", "--run.name=tested"])
    tested = json.loads((runs / "tested" / "summary.json").read_text())["metrics"]
    assert tested["test/acc"] == summary["metrics"]["test/acc"]

    # Stopped after its first epoch, then resumed to its end, in the same run directory.
    stop = {"class_path": "recovery_callbacks.StopAfter", "init_args": {"epochs": 1}}
    main([*fit, "--trainer.max_epochs=2", "--run.name=resumed", f"--trainer.callbacks+={json.dumps(stop)}"])
    assert torch.load(runs / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    main([*fit, "--trainer.max_epochs=2", "--run.name=resumed", "--ckpt_path", "last"])
    assert torch.load(runs / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in runs.iterdir()) == ["photos", "predicted", "resumed", "tested"]

    symtrain_main(["report", str(run_dir), "--out", str(tmp_path / "report")])
    report = (tmp_path / "report" / "report.md").read_text()
    assert "base pipeline" in report and "pad_crop+flip" in report


def test_a_bad_file_met_in_a_loader_worker_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Streamed, the file is only decoded in a worker mid-epoch: still one line, exit 2, and the
    run (no checkpoint yet) removed."""
    digits_folder(tmp_path / "photos", per_split=12)
    bad = sorted((tmp_path / "photos" / "train").rglob("*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[:200])
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", QUICKSTART, "--config", str(ROOT / "configs" / "data" / "folder.yaml"),
              f"--data.root={tmp_path / 'photos'}", "--data.image_size=16", "--data.channels=1",
              "--data.mean=[0.1]", "--data.std=[0.3]", "--data.storage=stream", "--data.num_workers=2",
              "--model.backbone.width=4", "--model.backbone.depth=1", "--run.wandb=false",
              f"--trainer.default_root_dir={runs}"])  # fmt: skip
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"symtrain: error: cannot read image {str(bad)!r}"), err
    assert not runs.exists() or not any(runs.iterdir())
