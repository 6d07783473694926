"""Data on disk and in memory: the peak memory of a streaming fit on a small and a large folder
of image files against the same fits held in memory (target: the streaming peak grows by at
most 200 MB); the streaming loader's images/s over photo-sized JPEGs against torchvision's
ImageFolder and DataLoader (target >= 0.95 with the same decode); the in-memory loader's epoch
against an epoch of training steps (target <= 0.02) and against cutting the batches by hand;
and the base pipeline batched by kornia against torchvision per image in loader workers."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

import torch
from torch import Tensor

from scripts.benchmark import ROOT
from scripts.benchmark.fits import train_step
from scripts.benchmark.memory import peak_tree_memory
from scripts.benchmark.section import Bench, Section
from scripts.benchmark.sizes import Sizes
from scripts.benchmark.table import Table
from symtrain.backbones import StandardCNN
from symtrain.module import SymmetryModule


def digits_photos(
    root: Path, num_train: int, scale: tuple[float, float], held_out: int = 100, jpeg_only: bool = False
) -> Path:
    """A folder of the real digits as image files of every size, format and mode
    (:func:`symtrain.data.photos.write_photo_folder`): ``num_train`` training files (the
    training digits written as often as needed, each time at other sizes) and ``held_out``
    validation and test files."""
    from symtrain.data import MNIST5k
    from symtrain.data.photos import KINDS, write_photo_folder

    kinds = [kind for kind in KINDS if kind[0] == "JPEG"] if jpeg_only else KINDS
    digits = MNIST5k(root=str(ROOT / "data"))
    digits.setup()
    train = digits.splits["train"]
    written, copy = 0, 0
    while written < num_train:
        count = min(len(train), num_train - written)
        part = {"train": (train.images[:count], train.labels[:count])}
        if copy == 0:
            for name in ("val", "test"):
                part[name] = (digits.splits[name].images[:held_out], digits.splits[name].labels[:held_out])
        write_photo_folder(root, part, digits.class_names, copy, scale, prefix=f"c{copy}-", kinds=kinds)
        written, copy = written + count, copy + 1
    return root


def streaming_memory(root: Path, sizes: Sizes) -> dict[str, Any]:
    """Peak memory of a one-epoch streaming fit on the small and the large folder (every image
    decoded in the loader's workers, two of them), and of the same fits held in memory."""
    rows = []
    for num_train in sizes.stream_train:
        folder = digits_photos(root / f"photos{num_train}", num_train, scale=(1.0, 2.5))
        for storage in ("stream", "memory"):
            command = [
                sys.executable, "-m", "symtrain", "fit", "--config", "configs/quickstart.yaml",
                "--data", "ImageFolder", "--data.root", str(folder), "--data.image_size", "32",
                "--data.channels", "1", "--data.storage", storage, "--data.num_workers", "2",
                "--model.backbone.width", "8", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
                "--trainer.default_root_dir", str(root / "runs"), "--metrics.families", "[]",
                "--run.test_after_fit", "false", "--run.wandb", "false", "--run.quiet", "true",
            ]  # fmt: skip
            seconds, peak = peak_tree_memory(command)
            rows.append(
                {"num_train": num_train, "storage": storage, "fit_s": seconds, "peak_mb": peak / 2**20}
            )
    return {"streaming_memory": rows}


def loader_throughput(root: Path, sizes: Sizes) -> dict[str, Any]:
    """Images/s of symtrain's streaming loader (ImageFolder, storage stream) over photo-sized
    JPEGs (RGB, gray, CMYK, EXIF-rotated, as ImageNet's are) against the loop anyone would write
    with torchvision (its ImageFolder, v2 resize and centre crop, a DataLoader with the same
    workers and batch size), once with torchvision.io's JPEG decoding (symtrain's: the same
    decode) and once with its default PIL loader; interleaved rounds, medians."""
    import torchvision
    from torchvision.transforms import v2

    from symtrain.data import ImageFolder

    folder = digits_photos(root / "large_photos", sizes.photo_train, (8.0, 14.0), 10, jpeg_only=True)
    size, workers, batch_size = 64, 2, 64
    data = ImageFolder(
        str(folder), image_size=size, channels=3, storage="stream", num_workers=workers,
        batch_size=batch_size, mean=[0.5] * 3, std=[0.25] * 3, val_fraction=0.0,
    )  # fmt: skip
    data.setup()
    resize = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    train = str(folder / "train")
    references = {
        "torchvision_io": torchvision.datasets.ImageFolder(train, transform=resize, loader=_torchvision_jpeg),
        "torchvision_pil": torchvision.datasets.ImageFolder(
            train, transform=v2.Compose([v2.PILToTensor(), resize])
        ),
    }
    loaders = {"symtrain": data.train_dataloader()}
    for name, dataset in references.items():
        loaders[name] = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=True
        )
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(sizes.rounds + 1):  # the first round starts the workers: not counted
        for name, loader in loaders.items():
            start, count = time.perf_counter(), 0
            for batch in loader:
                count += len(batch[1])
            rates[name].append(count / (time.perf_counter() - start))
    rate = {name: median(values[1:]) for name, values in rates.items()}
    return {
        "stream_images_per_s": rate["symtrain"],
        "torchvision_io_folder_images_per_s": rate["torchvision_io"],
        "torchvision_pil_folder_images_per_s": rate["torchvision_pil"],
        "stream_over_torchvision": rate["symtrain"] / rate["torchvision_io"],
        "stream_over_torchvision_pil": rate["symtrain"] / rate["torchvision_pil"],
        "photo_files": len(references["torchvision_io"]),
    }


def _torchvision_jpeg(path: str) -> Tensor:
    """torchvision.io's JPEG decoding, upright, RGB: what symtrain decodes JPEGs with."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    return decode_jpeg(read_file(path), mode=ImageReadMode.RGB, apply_exif_orientation=True)


class _PerImage(torch.utils.data.Dataset):
    """In-memory images through a per-image transform (what loader workers would run)."""

    def __init__(self, images: Tensor, transform: Callable[[Tensor], Tensor]) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.transform(self.images[index])


def base_pipeline_placement(sizes: Sizes, batch_size: int = 128, workers: int = 2) -> dict[str, Any]:
    """The base training pipeline (pad_crop + flip) on data held in memory: kornia over whole
    batches where they lie (symtrain's choice) against torchvision v2 per image in loader
    workers; images/s."""
    from symtrain.data import SyntheticShapes
    from symtrain.data.images import BasePipeline

    data = SyntheticShapes(num_train=sizes.num_train)
    data.setup()
    images = data.splits["train"].images  # uint8 (N, 1, 32, 32)
    pipeline = BasePipeline("pad_crop", flip=True)
    batched = pipeline.batch_transform()
    per_image = pipeline.image_transform(images.shape[-1], train=True, resize=False)
    loader = torch.utils.data.DataLoader(
        _PerImage(images, per_image), batch_size=batch_size, num_workers=workers, persistent_workers=True
    )
    device_rates, worker_rates = [], []
    for _ in range(sizes.rounds):
        start = time.perf_counter()
        for first in range(0, len(images), batch_size):
            batched(images[first : first + batch_size])
        device_rates.append(len(images) / (time.perf_counter() - start))
        start = time.perf_counter()
        for _batch in loader:
            pass
        worker_rates.append(len(images) / (time.perf_counter() - start))
    return {
        "base_pipeline_batched_images_per_s": median(device_rates),
        "base_pipeline_workers_images_per_s": median(worker_rates),
    }


def in_memory_loading(sizes: Sizes) -> dict[str, Any]:
    """The in-memory fast path (the quickstart's shapes, the real digits): an epoch of its
    training loader against an epoch of training steps, and against cutting the same batches
    from the tensors by hand."""
    from symtrain.data import MNIST5k, SyntheticShapes

    rows = {}
    for name, data in (
        ("shapes", SyntheticShapes(num_train=sizes.num_train)),
        ("digits", MNIST5k(root=str(ROOT / "data"))),
    ):
        data.setup()
        split = data.splits["train"]
        net = SymmetryModule(
            partial(StandardCNN, width=16, depth=3), num_classes=data.num_classes,
            in_channels=data.in_channels,
        ).net  # fmt: skip
        optimizer = torch.optim.AdamW(net.parameters())
        loader_s, hand_s, step_s = [], [], []
        for _ in range(sizes.rounds):
            start = time.perf_counter()
            batches = list(data.train_dataloader())
            loader_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            order = torch.randperm(len(split))
            cuts = [order[i : i + data.batch_size] for i in range(0, len(split), data.batch_size)]
            by_hand = [(split.images[cut], split.labels[cut]) for cut in cuts]
            hand_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            for images, labels in by_hand[: sizes.steps]:
                train_step(net, optimizer, images.float().div_(255), labels)
            step_s.append((time.perf_counter() - start) / min(sizes.steps, len(by_hand)) * len(batches))
        rows[name] = {
            "loader_epoch_s": median(loader_s),
            "by_hand_epoch_s": median(hand_s),
            "loader_share_of_training_epoch": median(loader_s) / median(step_s),
        }
    return {"in_memory_loading": rows}


def run(bench: Bench) -> dict[str, Any]:
    return {
        **streaming_memory(bench.root, bench.sizes),
        **loader_throughput(bench.root, bench.sizes),
        **in_memory_loading(bench.sizes),
        **base_pipeline_placement(bench.sizes),
    }


def rows(table: Table, results: dict[str, Any]) -> None:
    if "stream_over_torchvision" in results:
        files = results["photo_files"]
        ratio = results["stream_over_torchvision"]
        same = f"streaming loader img/s / torchvision ImageFolder + DataLoader, same decode ({files} JPEGs)"
        table.row(same, ratio, 0.95, True)
        pil = "streaming loader img/s / torchvision ImageFolder with its default PIL loader"
        table.info(pil, results["stream_over_torchvision_pil"], "{:.2f}")
    if "streaming_memory" in results:
        peaks = {(r["storage"], r["num_train"]): r["peak_mb"] for r in results["streaming_memory"]}
        small, large = sorted({r["num_train"] for r in results["streaming_memory"]})
        growth = peaks["stream", large] - peaks["stream", small]
        table.row(
            f"streaming fit: peak memory at {large:,} images - at {small:,} (MB)",
            growth,
            200,
            False,
            "{:.0f}",
        )
        table.info(f"in-memory fit: peak memory at {large:,} images - at {small:,} (MB)",
                   peaks["memory", large] - peaks["memory", small], "{:.0f}")  # fmt: skip
    for name, values in results.get("in_memory_loading", {}).items():
        share = values["loader_share_of_training_epoch"]
        table.row(
            f"in-memory loader ({name}): epoch of batches / epoch of training steps", share, 0.02, False
        )
        table.info(f"in-memory loader ({name}): epoch of batches / the same batches cut by hand",
                   values["loader_epoch_s"] / values["by_hand_epoch_s"], "{:.2f}")  # fmt: skip


def notes(results: dict[str, Any]) -> list[str]:
    lines = []
    if "streaming_memory" in results:
        lines += ["", "| training files | storage | fit (s) | peak memory, process and workers (MiB) |",
                  "|---:|---|---:|---:|"]  # fmt: skip
        for r in results["streaming_memory"]:
            lines.append(f"| {r['num_train']:,} | {r['storage']} | {r['fit_s']:.1f} | {r['peak_mb']:.0f} |")
    if "base_pipeline_batched_images_per_s" in results:
        batched, workers = (
            results["base_pipeline_batched_images_per_s"],
            results["base_pipeline_workers_images_per_s"],
        )
        lines.append(
            f"base pipeline (pad_crop + flip) on data in memory: batched kornia {batched:,.0f} img/s, "
            f"torchvision per image in 2 workers {workers:,.0f} img/s"
        )
    if "stream_images_per_s" in results:
        lines.append(
            f"photo loading: symtrain streaming {results['stream_images_per_s']:,.0f} img/s, torchvision "
            f"ImageFolder {results['torchvision_io_folder_images_per_s']:,.0f} img/s (torchvision.io), "
            f"{results['torchvision_pil_folder_images_per_s']:,.0f} img/s (PIL)"
        )
    return lines


SECTION = Section("data", order=90, run=run, rows=rows, notes=notes)
