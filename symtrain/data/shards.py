"""Image shards: a folder converted once into Lightning's litdata chunks and read from them,
for clusters (one read per chunk rather than a file open per image), shared or network file
systems, and object stores: a shards directory copied to a bucket is read from its URL
(``s3://``, ``gs://``, ``azure://``, ``r2://``, ``hf://``: litdata's downloaders, which
download each chunk once into a cache).

    python -m symtrain data shards --root DIR --out SHARDS --image_size 64
    python -m symtrain fit --config configs/quickstart.yaml --config configs/data/shards.yaml \
                           --data.root SHARDS

``SHARDS/{train,val,test}/`` are litdata datasets (``index.json`` and ``chunk-*.bin``) holding
each image's file bytes as they were (no re-encoding: decoding is the same as from the folder),
its label and its name; ``SHARDS/symtrain-shards.json``, written last, says what they are (the
classes, channels, size and statistics, each split's labels). The validation split is carved
out of ``train`` at conversion when the folder has no ``val/``, as :class:`ImageFolder` carves
it, and the training images are stored in a seeded random order, so that every chunk holds a
fair sample of the classes.

Reading goes through litdata's ``StreamingDataset`` by index; the training epochs are
:class:`~symtrain.data.loading.Batches`: each epoch permutes the chunks and the images
within each (a batch reads one chunk), every image is seen once per epoch, under DDP every
process takes the same number of steps, and a fit resumed from a mid-epoch checkpoint takes the
rest of that epoch's batches.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader

from symtrain.data.base import ImageDataModule, SplitSource
from symtrain.data.files import Decoding, EncodedImages, EncodedSplit, FileSplit
from symtrain.data.folder import ImageFolder, default_workers
from symtrain.data.images import Interpolation, TrainTransform, check_evaluation
from symtrain.errors import SymtrainError
from symtrain.runs import write_atomically

SHARDS_FILE = "symtrain-shards.json"
FORMAT = "symtrain-shards/1"
_CONVERT = "python -m symtrain data shards --root FOLDER --out DIR"


def _unreadable_files(split: FileSplit, num_workers: int) -> list[str]:
    """Decode every image of ``split`` once (in the loader's workers), keeping nothing; return
    the names of those that do not decode."""
    dataset = EncodedImages(split, split.transform(None))
    for _ in DataLoader(dataset, batch_size=64, num_workers=num_workers, collate_fn=_keep_nothing):
        pass
    return [split.name(index) for index in split.skipped.nonzero()[:, 0].tolist()]


def _keep_nothing(items: list[Any]) -> int:
    return len(items)


def write_shards(
    root: str,
    out: str,
    image_size: int | None = None,
    channels: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    skip_unreadable: bool = False,
    chunk_bytes: str = "32MB",
    num_workers: int | None = None,
) -> Path:
    """Convert the image folder ``root`` (:class:`ImageFolder`'s layout) into shards in ``out``.

    Every image is decoded once first, so that a file that does not decode is named now rather
    than mid-training (or, with ``skip_unreadable``, left out and counted).

    Returns:
        ``out``.
    """
    if not Path(root).is_dir():
        raise SymtrainError(f"--root {root!r} is not a directory: pass the image folder to convert")
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise SymtrainError(f"--out {out!r} exists and is not an empty directory: pass a new directory")
    workers = num_workers or default_workers()
    folder = ImageFolder(
        root, image_size=image_size, channels=channels, storage="stream", skip_unreadable=True,
        val_fraction=val_fraction, split_seed=split_seed, num_workers=workers,
    )  # fmt: skip
    folder.setup()
    splits = {
        name: split for name, split in folder.splits.items() if name != "test" or folder.test_split == "test"
    }
    skipped: dict[str, list[str]] = {}
    for name, split in splits.items():
        bad = _unreadable_files(split, workers)
        if bad and not skip_unreadable:
            raise SymtrainError(
                f"{len(bad)} image(s) in {root!r} cannot be decoded, e.g. {bad[0]!r}: replace or delete "
                f"them, or pass --skip_unreadable true to leave them out of the shards"
            )
        skipped[name] = bad
    meta_splits = {}
    for name, split in splits.items():
        keep = [index for index in range(len(split)) if not split.skipped[index]]
        if name == "train":  # chunks of one class would make batches of one class
            generator = torch.Generator().manual_seed(split_seed)
            keep = [keep[i] for i in torch.randperm(len(keep), generator=generator).tolist()]
        # litdata's chunk writer, in this process: the work is reading files' bytes (no decoding,
        # no re-encoding), which extra processes would not speed up.
        from litdata.streaming.writer import BinaryWriter

        writer = BinaryWriter(str(target / name), chunk_bytes=chunk_bytes)
        for position, index in enumerate(keep):  # the file's bytes, its label and its name
            image = Path(split.source(index)[0]).read_bytes()
            writer[position] = {"image": image, "label": int(split.labels[index]), "name": split.name(index)}
        writer.done()
        writer.merge()
        meta_splits[name] = {"count": len(keep), "labels": [int(split.labels[index]) for index in keep]}
    meta = {
        "format": FORMAT,
        "source": os.path.abspath(root),
        "class_names": folder.class_names,
        "channels": folder.in_channels,
        "image_size": folder.image_size,
        "resize": folder.decoding.resize,
        "mean": list(folder.mean),
        "std": list(folder.std),
        "test_split": folder.test_split,
        "skipped_unreadable": sum(len(bad) for bad in skipped.values()),
        "splits": meta_splits,
    }
    write_atomically(target / SHARDS_FILE, json.dumps(meta))  # last: without it, an unfinished conversion
    return target


def shards_parser():  # noqa: ANN201  (jsonargparse is imported by the command only)
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(description="convert an image folder into litdata shards")
    parser.add_function_arguments(write_shards)
    return parser


# The URL prefixes litdata downloads from ("local:" reads a directory the same way, with a cache).
REMOTE_PREFIXES = ("s3://", "gs://", "azure://", "r2://", "hf://", "local:")


class ShardsLocation:
    """Where shards are: a local or mounted directory, or an object store's URL that litdata
    reads, whose files are downloaded into ``cache_dir`` (default: a folder of the temporary
    directory named after the URL).

    Examples:
        >>> ShardsLocation("s3://bucket/shards/").join("train", "index.json")
        's3://bucket/shards/train/index.json'
        >>> ShardsLocation("data/shards").remote
        False
    """

    def __init__(self, root: str, cache_dir: str | None = None) -> None:
        self.remote = root.startswith(REMOTE_PREFIXES)
        self.root = root.rstrip("/") if self.remote else root
        self.cache_dir = cache_dir

    def join(self, *parts: str) -> str:
        return "/".join([self.root, *parts]) if self.remote else os.path.join(self.root, *parts)

    def read_text(self, *parts: str) -> str:
        """A file's text (downloaded first from an object store).

        Raises:
            OSError: if it cannot be read (with the store's reason, for a URL).
        """
        if not self.remote:
            return Path(self.join(*parts)).read_text()
        from litdata.streaming.downloader import get_downloader

        local = Path(self.files_cache(), *parts)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            get_downloader(self.root, str(local.parent), []).download_file(self.join(*parts), str(local))
        except Exception as error:  # each store's client has its own errors (botocore, gcsfs, ...)
            raise OSError(" ".join(str(error).split()) or type(error).__name__) from error
        return local.read_text()

    def files_cache(self) -> str:
        """Where the files read from an object store are kept."""
        name = hashlib.sha1(self.root.encode()).hexdigest()[:16]
        return os.path.join(self.cache_dir or tempfile.gettempdir(), f"symtrain-shards-{name}")


class ShardSplit(EncodedSplit):
    """One split of a shards directory: its labels (from ``symtrain-shards.json``) and images
    read by index through litdata's ``StreamingDataset`` (chunks memory-mapped), decoded as the
    folder's files are.

    Args:
        directory: the split's litdata directory (or URL).
        labels: the images' labels, in stored order.
        decoding: how the images are decoded.
        index: the split's ``index.json``.
        cache_dir: where litdata keeps chunks downloaded from an object store (None: its default).
    """

    def __init__(
        self,
        directory: str,
        labels: list[int],
        decoding: Decoding,
        index: dict[str, Any],
        cache_dir: str | None,
    ) -> None:
        super().__init__(torch.tensor(labels, dtype=torch.int64), decoding)
        self.directory, self.cache_dir = directory, cache_dir
        # The chunks' sizes: a training epoch reads each chunk's images together.
        self.blocks = [int(chunk["chunk_size"]) for chunk in index["chunks"]]
        self._reader: tuple[int, Any] | None = None  # (process, litdata's StreamingDataset)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None}  # each (spawned) worker opens its own

    def source(self, index: int) -> tuple[str, bytes | None]:
        if self._reader is None or self._reader[0] != os.getpid():  # one reader per process
            import litdata  # here: its import (boto3 and more) costs every command a third of a second

            self._reader = (os.getpid(), litdata.StreamingDataset(self.directory, cache_dir=self.cache_dir))
        sample = self._reader[1][index]
        return f"{self.directory}: {sample['name']}", sample["image"]


class ImageShards(ImageDataModule):
    """Images from shards written by ``python -m symtrain data shards`` (see the module's
    documentation), read through litdata: every process decodes its own share in its loader
    workers, and a mid-epoch checkpoint resumes the epoch where it stopped.

    Args:
        root: the shards directory (holding ``symtrain-shards.json``), or its URL in an object
            store (``s3://bucket/shards``; credentials as the store's client finds them).
        image_size: side S the model sees; None: the conversion's (its ``--image_size``, or the
            images' own size when they were all one square size).
        mean: per-channel mean of the images in [0, 1]; None: the conversion's estimate (of
            its evaluation view: without ``crop_fraction`` and ``interpolation``).
        std: per-channel standard deviation; None: the conversion's estimate.
        train_transform: the base training pipeline: ``none``, ``pad_crop`` or ``resized_crop``.
        train_flip: random horizontal flips in the base pipeline (recorded with the run).
        skip_unreadable: leave out samples that do not decode (counted in ``summary.json``).
        batch_size: samples per batch (per process).
        num_workers: loader worker processes per process; None: one per core, at most 8.
        cache_dir: where shards read from an object store are kept (None: litdata's default for
            the chunks, a folder of the temporary directory for the record and indexes).
        crop_fraction: the share of the resized image's shorter side that the evaluation centre
            crop keeps: timm's ``crop_pct`` (``resolve_data_config``; ``crop_mode='center'``).
            The shorter side is resized to ``floor(S / crop_fraction)`` (as timm rounds it), then
            the centre S x S is cropped: 0.875 gives the papers' 256 -> 224. In (0, 1]; it
            resizes the stored images even when they were stored at S x S. None: 1 (shorter side
            resized to S). The ``none`` and ``pad_crop`` training views start from this view too.
        interpolation: the resizes' interpolation, ``bilinear``, ``bicubic`` or ``nearest``
            (torchvision's ``InterpolationMode``, antialiased; timm's ``interpolation``), the
            ``resized_crop`` of training images included; None: bilinear.

    Examples:
        >>> ImageShards("no/such/shards")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        symtrain.errors.SymtrainError: data.root 'no/such/shards' is not a directory: convert an image ...
    """

    name = "shards"
    storage = "shards"

    def __init__(
        self,
        root: str,
        image_size: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        train_transform: TrainTransform = "none",
        train_flip: bool = False,
        skip_unreadable: bool = False,
        batch_size: int = 128,
        num_workers: int | None = None,
        cache_dir: str | None = None,
        crop_fraction: float | None = None,
        interpolation: Interpolation | None = None,
    ) -> None:
        workers = default_workers() if num_workers is None else num_workers
        super().__init__(batch_size, 0.0, workers, 0, False, train_transform, train_flip)
        self.root = root
        check_evaluation(crop_fraction, interpolation)
        self.crop_fraction, self.interpolation = crop_fraction, interpolation
        self.skip_unreadable = skip_unreadable
        self.location = ShardsLocation(root, cache_dir)
        self.meta, self.indexes = self._read_meta(self.location)
        self.class_names = list(self.meta["class_names"])
        self.num_classes = len(self.class_names)
        self.in_channels = int(self.meta["channels"])
        self.image_size = int(self.meta["image_size"] if image_size is None else image_size)
        # Images of one square size were stored as they are; resizing is needed for any other
        # size, and for a crop fraction.
        self.resize = (
            bool(self.meta["resize"])
            or self.image_size != int(self.meta["image_size"])
            or crop_fraction is not None
        )
        self.mean = tuple(self.meta["mean"] if mean is None else mean)
        self.std = tuple(self.meta["std"] if std is None else std)
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise SymtrainError(f"data.mean and data.std need {self.in_channels} value(s) each")
        self.test_split = self.meta["test_split"]
        self.skipped_elsewhere = int(self.meta["skipped_unreadable"])  # left out at conversion
        self.decoding = Decoding(
            self.in_channels, self.image_size, self.resize, skip_unreadable,
            crop_fraction=crop_fraction, interpolation=interpolation,
        )  # fmt: skip

    @staticmethod
    def _read_meta(location: ShardsLocation) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """The conversion's record and each split's ``index.json``, checked against each other."""
        root = location.root
        if not location.remote:
            if not Path(root).is_dir():
                raise SymtrainError(
                    f"data.root {root!r} is not a directory: convert an image folder with {_CONVERT} "
                    "and pass DIR"
                )
            if not os.access(root, os.R_OK | os.X_OK):
                raise SymtrainError(f"data.root {root!r} cannot be read: give this user read access to it")
        try:
            meta = json.loads(location.read_text(SHARDS_FILE))
        except (OSError, ValueError) as error:
            if location.remote:
                raise SymtrainError(
                    f"cannot read {location.join(SHARDS_FILE)} ({error}): check the URL and the store's "
                    f"credentials, or copy the shards directory there again"
                ) from None
            meta = None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise SymtrainError(
                f"{root!r} holds no {SHARDS_FILE}: it is not (or not completely) a shards directory; "
                f"convert the image folder with {_CONVERT}"
            )
        indexes = {}
        for name, split in meta["splits"].items():
            try:
                indexes[name] = json.loads(location.read_text(name, "index.json"))
                stored = sum(int(chunk["chunk_size"]) for chunk in indexes[name]["chunks"])
            except (OSError, ValueError, KeyError, TypeError):
                stored = None
            if stored is None:
                raise SymtrainError(
                    f"{location.join(name)!r} holds no shards (no readable index.json): convert the folder "
                    f"again with {_CONVERT}"
                )
            if stored != split["count"] or len(split["labels"]) != stored:
                raise SymtrainError(
                    f"{location.join(name)!r} holds {stored} images but {SHARDS_FILE} says {split['count']}: "
                    f"the shards come from another conversion; convert the folder again into a new directory"
                )
        return meta, indexes

    def setup(self, stage: str | None = None) -> None:
        # Here, not in __init__: litdata reads the processes' ranks when a dataset is built.
        if self.splits:
            return
        location = self.location
        splits: dict[str, SplitSource] = {
            name: ShardSplit(
                location.join(name), split["labels"], self.decoding, self.indexes[name], location.cache_dir
            )
            for name, split in self.meta["splits"].items()
        }
        if "test" not in splits:
            splits["test"] = splits["val"]
            rank_zero_info(f"{self.root!r} has no test shards: the test metrics are the val split's")
        self.splits = splits

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "source": self.meta["source"]}
