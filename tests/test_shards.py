"""Image shards (litdata): a folder converted once, read back as it was, split between DDP
processes, resumed mid-epoch, and refused in one line when they are not what they claim."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from folder_helpers import digits_folder, gradient_photo, photo_folder
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from symtrain.cli import main
from symtrain.data import ImageFolder
from symtrain.data.shards import SHARDS_FILE, ImageShards, write_shards
from symtrain.errors import SymtrainError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def indexed_folder(root: Path, num_train: int, num_val: int = 12, size: int = 8) -> None:
    """``num_train`` training images whose first two pixels spell their index (high, low byte),
    in two classes, and ``num_val`` validation images (indices from 1000 on); PNG: lossless."""
    for split, first, count in (("train", 0, num_train), ("val", 1000, num_val)):
        for index in range(first, first + count):
            label = index % 2
            pixels = torch.full((size, size), 60 + 120 * label, dtype=torch.uint8)
            pixels[0, 0], pixels[0, 1] = index // 256, index % 256
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.numpy()).save(folder / f"{index:05d}.png")


def test_shards_hold_the_folder_and_read_back_what_it_decodes(tmp_path: Path) -> None:
    digits_folder(tmp_path / "photos", per_split=30)
    write_shards(str(tmp_path / "photos"), str(tmp_path / "shards"), image_size=21, channels=1, num_workers=0)
    meta = json.loads((tmp_path / "shards" / SHARDS_FILE).read_text())
    assert {name: split["count"] for name, split in meta["splits"].items()} == {
        "train": 30,
        "val": 30,
        "test": 30,
    }
    shards = ImageShards(str(tmp_path / "shards"), num_workers=0, batch_size=8)
    folder = ImageFolder(str(tmp_path / "photos"), image_size=21, channels=1, storage="memory", batch_size=8)
    assert (shards.class_names, shards.in_channels, shards.image_size) == (folder.class_names, 1, 21)
    assert shards.mean == folder.mean and shards.std == folder.std  # estimated once, at conversion
    shards.setup("fit")
    folder.setup("fit")
    for split in ("val", "test"):  # in order, every image once, decoded exactly as from the folder
        streamed = [batch for batch in getattr(shards, f"{split}_dataloader")()]
        held = [batch for batch in getattr(folder, f"{split}_dataloader")()]
        assert torch.equal(torch.cat([b[0] for b in streamed]), torch.cat([b[0] for b in held]))
        assert torch.equal(torch.cat([b[1] for b in streamed]), torch.cat([b[1] for b in held]))
        assert torch.equal(
            shards.splits[split].sample(10, 0).images, folder.splits[split].sample(10, 0).images
        )
    order = torch.cat([batch[1] for batch in shards.train_dataloader()])
    assert sorted(order.tolist()) == sorted(folder.splits["train"].labels.tolist())
    assert shards.describe()["storage"] == "shards"


def test_conversion_mistakes_and_foreign_shards_are_one_line(tmp_path: Path) -> None:
    digits_folder(tmp_path / "photos", per_split=12)
    bad = next((tmp_path / "photos" / "train").rglob("*.png"))
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(
        SymtrainError, match=r"1 image\(s\) in .* cannot be decoded, e.g. .*--skip_unreadable true"
    ):
        write_shards(str(tmp_path / "photos"), str(tmp_path / "a"), image_size=16, num_workers=0)
    assert not (tmp_path / "a" / SHARDS_FILE).exists()
    write_shards(
        str(tmp_path / "photos"), str(tmp_path / "a"), image_size=16, num_workers=0, skip_unreadable=True
    )
    assert json.loads((tmp_path / "a" / SHARDS_FILE).read_text())["skipped_unreadable"] == 1
    with pytest.raises(SymtrainError, match="exists and is not an empty directory"):
        write_shards(str(tmp_path / "photos"), str(tmp_path / "a"), image_size=16, num_workers=0)

    settings = dict(image_size=16, num_workers=0, skip_unreadable=True)
    write_shards(str(tmp_path / "photos"), str(tmp_path / "b"), val_fraction=0.5, **settings)
    shutil.rmtree(tmp_path / "b" / "val")
    shutil.copytree(tmp_path / "a" / "train", tmp_path / "b" / "val")  # another conversion's shards
    (tmp_path / "empty").mkdir()
    (tmp_path / "c").mkdir()
    shutil.copy(tmp_path / "a" / SHARDS_FILE, tmp_path / "c" / SHARDS_FILE)  # the record without shards
    for root, message in [
        (
            tmp_path / "nowhere",
            "is not a directory: convert an image folder with python -m symtrain data shards",
        ),
        (tmp_path / "empty", f"holds no {SHARDS_FILE}: it is not .* a shards directory"),
        (tmp_path / "photos", f"holds no {SHARDS_FILE}"),
        (tmp_path / "c", "holds no shards \\(no readable index.json\\)"),
        (
            tmp_path / "b",
            "holds 11 images but symtrain-shards.json says .*: the shards come from another conversion",
        ),
    ]:
        with pytest.raises(SymtrainError, match=message) as raised:
            ImageShards(str(root))
        assert "\n" not in str(raised.value)


def test_the_data_command_writes_folders_and_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from symtrain.__main__ import main as symtrain_main

    symtrain_main(["data", "digits-folder", "--out", str(tmp_path / "digits"), "--root", str(ROOT / "data")])
    assert "5000 images in" in capsys.readouterr().out
    counts = {
        split: len(list((tmp_path / "digits" / split).rglob("*.*"))) for split in ("train", "val", "test")
    }
    assert counts == {"train": 3600, "val": 400, "test": 1000}
    indexed_folder(tmp_path / "small", 20)
    symtrain_main(["data", "shards", "--root", str(tmp_path / "small"), "--out", str(tmp_path / "shards")])
    assert ImageShards(str(tmp_path / "shards")).image_size == 8
    with pytest.raises(SystemExit) as exited:
        symtrain_main(
            ["data", "shards", "--root", str(tmp_path / "small"), "--out", str(tmp_path / "shards")]
        )
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"symtrain: error: --out {str(tmp_path / 'shards')!r} exists and is not an empty directory: "
        "pass a new directory"
    ]


def seen(directory: Path) -> dict[int, list[int]]:
    """Training images seen per epoch, over every process's record, in step order."""
    records = []
    for path in sorted(directory.glob("rank*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines()]
    per_epoch: dict[int, list[int]] = {}
    for record in sorted(records, key=lambda r: (r["step"], r["ids"])):
        per_epoch.setdefault(record["epoch"], []).extend(record["ids"])
    return per_epoch


def shard_fit(root: Path, shards: Path, record: Path, *extra: str) -> list[str]:
    record.mkdir(parents=True, exist_ok=True)
    spec = {"class_path": "recovery_callbacks.RecordSamples", "init_args": {"directory": str(record)}}
    return [
        "fit", "--config", QUICKSTART, "--data", "ImageShards", f"--data.root={shards}",
        "--data.image_size=null",  # as stored (the quickstart's shapes are 32)
        "--data.batch_size=8", "--data.num_workers=2", "--model.backbone.width=4", "--model.backbone.depth=1",
        "--metrics.families=[]", "--run.test_after_fit=false", "--run.wandb=false", "--run.quiet=true",
        f"--trainer.default_root_dir={root}", f"--trainer.callbacks+={json.dumps(spec)}", *extra,
    ]  # fmt: skip


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "SYMTRAIN_RUN_DIR", "PYTHONHASHSEED")
    }
    env.update(PYTHONPATH=str(ROOT / "tests"), WANDB_MODE="offline", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "symtrain", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=500)


@pytest.mark.slow
def test_two_processes_see_every_image_once_per_epoch_in_as_many_steps(tmp_path: Path) -> None:
    """103 images in batches of 8 between 2 processes: each epoch every image exactly once, both
    processes 7 steps (batches of 7 or 8), and another order the next epoch."""
    indexed_folder(tmp_path / "folder", 103)
    write_shards(str(tmp_path / "folder"), str(tmp_path / "shards"), num_workers=0, chunk_bytes="4kB")
    assert len(ImageShards(str(tmp_path / "shards")).meta["splits"]["train"]["labels"]) == 103
    ddp = ["--trainer.max_epochs=2", "--config", str(ROOT / "configs" / "trainer" / "ddp_cpu.yaml")]
    done = run(shard_fit(tmp_path / "runs", tmp_path / "shards", tmp_path / "seen", *ddp), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = {}
    for rank in (0, 1):
        records = [
            json.loads(line) for line in (tmp_path / "seen" / f"rank{rank}.jsonl").read_text().splitlines()
        ]
        steps[rank] = [(r["epoch"], r["step"]) for r in records]
        assert {len(r["ids"]) for r in records} <= {7, 8}
    assert steps[0] == steps[1] and len(steps[0]) == 2 * 7
    epochs = seen(tmp_path / "seen")
    assert sorted(epochs) == [0, 1]
    for ids in epochs.values():
        assert sorted(ids) == list(range(103))
    assert epochs[0] != epochs[1]


@pytest.mark.slow
def test_a_fit_stopped_mid_epoch_resumes_without_repeating_or_skipping(tmp_path: Path) -> None:
    """SIGTERM at step 7 of 13 (epoch 1 of 2): the resumed fit sees the rest of that epoch and
    then the next one exactly as an uninterrupted fit does."""
    indexed_folder(tmp_path / "folder", 100)
    write_shards(str(tmp_path / "folder"), str(tmp_path / "shards"), num_workers=0)
    epochs = "--trainer.max_epochs=2"
    whole = run(shard_fit(tmp_path / "whole", tmp_path / "shards", tmp_path / "seen_whole", epochs), tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    stop = {"class_path": "recovery_callbacks.SignalAt", "init_args": {"step": 7, "signal_name": "SIGTERM"}}
    args = shard_fit(tmp_path / "runs", tmp_path / "shards", tmp_path / "seen", epochs, "--run.name=stopped")
    stopped = run([*args, f"--trainer.callbacks+={json.dumps(stop)}"], tmp_path)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert len(seen(tmp_path / "seen")[0]) == 7 * 8
    resumed = run([*args, "--ckpt_path", "last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = seen(tmp_path / "seen_whole"), seen(tmp_path / "seen")
    assert got == expected
    assert all(sorted(ids) == list(range(100)) for ids in got.values())


def test_a_shards_run_trains_tests_and_reloads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import symtrain

    indexed_folder(tmp_path / "folder", 40, size=11)
    write_shards(str(tmp_path / "folder"), str(tmp_path / "shards"), num_workers=0)
    args = shard_fit(tmp_path / "runs", tmp_path / "shards", tmp_path / "seen", "--trainer.max_epochs=1",
                     "--run.name=run", "--run.test_after_fit=true", "--data.num_workers=0")  # fmt: skip
    main(args)
    run_dir = tmp_path / "runs" / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["data"]["storage"] == "shards" and summary["data"]["test_split"] == "val"
    assert "test/acc" in summary["metrics"]
    net = symtrain.load_model(run_dir)
    assert net(torch.rand(2, 1, 11, 11)).shape == (2, 2)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    main(
        [
            "test",
            "--config",
            str(run_dir / "config.yaml"),
            "--ckpt_path",
            str(checkpoint),
            "--run.name=tested",
        ]
    )
    assert "test/acc" in json.loads((tmp_path / "runs" / "tested" / "summary.json").read_text())["metrics"]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    count=st.integers(1, 300),
    batch_size=st.integers(1, 40),
    world_size=st.integers(1, 5),
    seed=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    epoch=st.integers(0, 3),
    chunk=st.integers(1, 50),
)
def test_batches_give_every_image_once_in_equal_steps(
    count: int, batch_size: int, world_size: int, seed: int | None, epoch: int, chunk: int
) -> None:
    """Drawn settings: every image once per epoch across the processes, the same number of
    batches in each, none larger than batch_size + 1 and none empty; a seeded training order
    changes with the epoch (shards' chunks too)."""
    from symtrain.data.base import Batches

    if count < world_size:
        with pytest.raises(SymtrainError, match="cannot be shared by"):
            Batches(list(range(count)), list, batch_size, 0, world_size)
        return
    blocks = [min(chunk, count - start) for start in range(0, count, chunk)]
    for layout in (None, blocks):
        shares = [
            Batches(list(range(count)), list, batch_size, r, world_size, seed, layout)
            for r in range(world_size)
        ]
        batches = [share.batches(epoch) for share in shares]
        assert len({len(part) for part in batches}) == 1 and all(
            len(part) == len(s) for part, s in zip(batches, shares, strict=True)
        )
        sizes = [len(b) for part in batches for b in part]
        assert 0 < min(sizes) and max(sizes) <= batch_size + 1
        assert sorted(i for part in batches for b in part for i in b.tolist()) == list(range(count))
        if seed is not None and count > 3:
            assert not torch.equal(shares[0].order(epoch), shares[0].order(epoch + 1))


def test_a_loader_resumes_where_its_position_says_and_refuses_another_layout() -> None:
    from symtrain.data.base import Batches, TrainingLoader

    loader = TrainingLoader(Batches(list(range(50)), torch.tensor, 4, seed=7), num_workers=0)
    whole = [batch.tolist() for batch in loader]
    stopped = TrainingLoader(Batches(list(range(50)), torch.tensor, 4, seed=7), num_workers=0)
    taken = []
    for batch in stopped:
        taken.append(batch.tolist())
        if len(taken) == 5:
            break
    position = stopped.position()
    resumed = TrainingLoader(Batches(list(range(50)), torch.tensor, 4, seed=123), num_workers=0)
    resumed.resume_at(position)  # the saved order (seed 7), from batch 5
    assert taken + [batch.tolist() for batch in resumed] == whole
    other = TrainingLoader(Batches(list(range(50)), torch.tensor, 8, seed=7), num_workers=0)
    with pytest.raises(
        SymtrainError, match="stopped after batch 5 of 13 .* resume with the processes, batch size"
    ):
        other.resume_at(position)
    finished = {**position, "taken": position["steps"]}
    other.resume_at(finished)  # an epoch that ended: the next one is cut afresh


def test_shards_are_read_from_an_object_store_url_through_litdatas_downloaders(tmp_path: Path) -> None:
    """``local:`` is litdata's downloader for a directory, read as from a bucket (the same code
    path as s3:// and gs://): files and chunks are downloaded into the cache first."""
    indexed_folder(tmp_path / "folder", 30)
    write_shards(str(tmp_path / "folder"), str(tmp_path / "shards"), num_workers=0)
    local = ImageShards(str(tmp_path / "shards"), num_workers=0, batch_size=8)
    remote = ImageShards(
        f"local:{tmp_path / 'shards'}/", num_workers=0, batch_size=8, cache_dir=str(tmp_path / "cache")
    )
    assert remote.location.remote and remote.meta == local.meta
    for data in (local, remote):
        data.setup("fit")
    for split in ("train", "val"):
        assert torch.equal(
            local.splits[split].sample(10, 0).images, remote.splits[split].sample(10, 0).images
        )
    val = [torch.cat([b[0] for b in data.val_dataloader()]) for data in (local, remote)]
    assert torch.equal(val[0], val[1])
    assert list((tmp_path / "cache").rglob("chunk-*.bin")), "the chunks were downloaded into the cache"
    with pytest.raises(
        SymtrainError, match=r"cannot read local:.*nowhere/symtrain-shards.json \(.*\): check the URL"
    ):
        ImageShards(f"local:{tmp_path / 'nowhere'}", cache_dir=str(tmp_path / "cache"))


def test_shards_evaluate_with_the_folders_crop_fraction_and_interpolation(tmp_path: Path) -> None:
    from torchvision.transforms import v2

    photo_folder(tmp_path / "photos")
    shutil.copytree(tmp_path / "photos" / "test", tmp_path / "photos" / "val")  # no split left empty
    write_shards(str(tmp_path / "photos"), str(tmp_path / "shards"), image_size=16, num_workers=0)
    stats = dict(mean=[0.5] * 3, std=[0.2] * 3, num_workers=0)
    for options in ({}, {"crop_fraction": 0.5, "interpolation": "bicubic"}, {"crop_fraction": 0.875}):
        shards = ImageShards(str(tmp_path / "shards"), **stats, **options)
        folder = ImageFolder(str(tmp_path / "photos"), image_size=16, **stats, **options)
        for data in (shards, folder):
            data.setup()
        image = next(iter(shards.test_dataloader()))[0]
        assert torch.equal(image, next(iter(folder.test_dataloader()))[0]), options
        described = shards.describe()
        assert (described["crop_fraction"], described["interpolation"]) == (
            options.get("crop_fraction"),
            options.get("interpolation"),
        )
    # Images stored as they were (one square size): a crop fraction resizes them all the same.
    (tmp_path / "square").mkdir()
    for split in ("train", "val", "test"):
        (tmp_path / "square" / split / "a").mkdir(parents=True)
        gradient_photo(20, 20).save(tmp_path / "square" / split / "a" / "photo.png")
    write_shards(str(tmp_path / "square"), str(tmp_path / "stored"), num_workers=0)
    assert not json.loads((tmp_path / "stored" / SHARDS_FILE).read_text())["resize"]
    shards = ImageShards(str(tmp_path / "stored"), crop_fraction=0.5, **stats)
    shards.setup()
    photo = v2.PILToTensor()(gradient_photo(20, 20))
    expected = v2.CenterCrop(20)(v2.Resize(40, antialias=True)(photo))
    assert torch.equal(next(iter(shards.test_dataloader()))[0][0], expected)
    for bad, message in [
        ({"crop_fraction": 0}, "data.crop_fraction is 0: pass a share in \\(0, 1\\]"),
        ({"crop_fraction": 1.5}, "data.crop_fraction is 1.5: pass a share in \\(0, 1\\]"),
        ({"interpolation": "area"}, "data.interpolation is 'area': pass one of"),
    ]:
        with pytest.raises(SymtrainError, match=message) as raised:
            ImageShards(str(tmp_path / "shards"), **bad)
        assert "\n" not in str(raised.value)
