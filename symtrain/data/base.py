"""Base class of the data modules, and the in-memory split (the fast path for small data).

A subclass says how to produce its splits, this class does the rest: the validation carve-out,
the loaders, the base training pipeline, what a run records about its data, and the facts the
model needs linked into it. A split is held in memory as uint8 tensors (:class:`Split`: the
digits, the shapes, CIFAR-10, small folders) or read from disk as it is needed (a split of
files or shards, for data that does not fit); each kind gives a map-style dataset, and this
class batches it: in memory in one process as a plain loader (the fast path), otherwise in
:class:`Batches` (every image once per epoch across processes, exact mid-epoch resumes).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from symtrain.data.images import BasePipeline, TrainTransform
from symtrain.data.loading import Batches, SplitDataset, TrainingLoader, keep_batch, worker_start
from symtrain.metrics.subset import stratified_subset


@dataclass
class Split:
    """One split of a dataset held in memory.

    Attributes:
        images: uint8 images, shape (N, C, H, W), values 0..255.
        labels: int64 class indices, shape (N,).
        masks: optional int64 per-pixel class indices, shape (N, H, W); 0 is background.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device) -> Split:
        return Split(
            self.images.to(device),
            self.labels.to(device),
            None if self.masks is None else self.masks.to(device),
        )

    def subset(self, index: torch.Tensor) -> Split:
        return Split(
            self.images[index], self.labels[index], None if self.masks is None else self.masks[index]
        )

    def sample(self, count: int, seed: int) -> Split:
        """A seeded, class-stratified subset of ``count`` images (what measurements read)."""
        return self.subset(stratified_subset(self.labels, count, seed).to(self.labels.device))

    def dataset(
        self, pipeline: BasePipeline | None, with_masks: bool
    ) -> tuple[Dataset, Callable[[Any], Any]]:
        """The split as a dataset and its collate function: whole batches cut with one indexing
        operation, put through ``pipeline``'s batch transform (None: as they are)."""
        transform = pipeline.batch_transform() if pipeline is not None else None
        return SplitDataset(self, with_masks, transform), keep_batch


class SplitSource(Protocol):
    """What the data module needs of a split, held in memory or read from disk: its size and
    labels, a validation carve-out, a measured subset, and a dataset to load batches from."""

    labels: Tensor

    def __len__(self) -> int: ...

    def subset(self, index: Tensor) -> SplitSource: ...

    def sample(self, count: int, seed: int) -> Split: ...

    def dataset(
        self, pipeline: BasePipeline | None, with_masks: bool
    ) -> tuple[Dataset, Callable[[Any], Any]]: ...


class ImageDataModule(pl.LightningDataModule):
    """Base of the image data modules.

    Subclasses set ``num_classes``, ``in_channels``, ``image_size``, ``mean``, ``std``,
    ``class_names`` and ``name`` in ``__init__`` (the CLI links ``num_classes``,
    ``in_channels``, ``mean`` and ``std`` into the model, so they must be known before
    ``setup``) and implement :meth:`load_splits`. ``mean``/``std`` are per-channel statistics
    of images scaled to [0, 1]; the model normalises with them.

    Images are delivered as uint8 (B, C, H, W); the model turns them into floats in [0, 1].

    Args:
        batch_size: samples per training/evaluation batch.
        val_fraction: share of the training split carved out for validation when the
            dataset has no validation split of its own.
        num_workers: DataLoader worker processes (0 is fastest for in-memory tensors).
        split_seed: seed of the validation carve-out.
        on_device: when training on a GPU with ``num_workers=0``, copy the splits to it once
            in ``setup`` so batches are cut on the device and never cross the bus.
        train_transform: the base training pipeline, before any symmetry strategy: ``none``,
            ``pad_crop`` (pad 4 and crop, CIFAR's) or ``resized_crop`` (ImageNet's random
            resized crop); see :class:`~symtrain.data.images.BasePipeline`.
        train_flip: also flip training images horizontally at random in the base pipeline.
            A flip is a symmetry under study: prefer a symmetry strategy; a run trained with it
            records it (``summary.json``'s ``base_pipeline``, wandb, the report).
    """

    name: str = "data"
    # Settings of tiny instances the contract tests build (a ``root`` they do not set is
    # pointed at an empty directory, where the module must refuse in one line).
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({},)
    # Whether :meth:`load_splits` gives per-pixel masks (for segmentation), and whether the
    # loaders deliver them: the CLI turns ``with_masks`` on for a segmentation model.
    has_masks: bool = False
    with_masks: bool = False
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    # Where the splits live (``memory``, ``stream``: files decoded in the loader's workers,
    # ``shards``), and which split the test metrics come from.
    storage: str = "memory"
    test_split: str = "test"
    # Unreadable images left out before the splits were built (while decoding into memory, or
    # when shards were written); those met while loading are flagged in the splits themselves.
    skipped_elsewhere: int = 0

    def __init__(
        self,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        split_seed: int = 0,
        on_device: bool = True,
        train_transform: TrainTransform = "none",
        train_flip: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.split_seed = split_seed
        self.on_device = on_device
        self.pipeline = BasePipeline(train_transform, train_flip)
        self.splits: dict[str, SplitSource] = {}
        self._training_loader: TrainingLoader | None = None
        self._resume_position: dict[str, int] | None = None

    def load_splits(self) -> dict[str, SplitSource]:
        """Return at least ``train`` and ``test`` splits (``val`` is optional)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the data: where training is in its epoch (streamed and
        sharded data, or under DDP), for an exact mid-epoch resume."""
        loader = self._training_loader
        return {"training_position": loader.position()} if loader is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume_position = state.get("training_position")
        if self._training_loader is not None and self._resume_position is not None:
            self._training_loader.resume_at(self._resume_position)

    def describe(self) -> dict[str, Any]:
        """What a run records about its data (``summary.json``'s ``data``): the base pipeline
        training went through, the size, channels and statistics, where the splits lived and
        how many images each held, and the class each label stands for (what a model trained on
        them is scored against when measured on other data)."""
        return {
            "name": self.name,
            "class_names": [str(name) for name in getattr(self, "class_names", [])],
            "base_pipeline": self.pipeline.name,
            "train_transform": self.pipeline.train_transform,
            "train_flip": self.pipeline.flip,
            "image_size": self.image_size,
            # The evaluation view's options of the image-folder modules (None: their defaults).
            "crop_fraction": getattr(self, "crop_fraction", None),
            "interpolation": getattr(self, "interpolation", None),
            "channels": self.in_channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "storage": self.storage,
            "test_split": self.test_split,
            "sizes": {name: len(split) for name, split in self.splits.items()},
            "skipped_unreadable": self.skipped_elsewhere
            + sum(int(flags.sum()) for flags in self._skip_flags()),
        }

    def _skip_flags(self) -> list[Tensor]:
        """Each split's flags of the images found unreadable and skipped while loading (each
        split once: the test split may be the val split)."""
        flags = {id(split): getattr(split, "skipped", None) for split in self.splits.values()}
        return [flag for flag in flags.values() if flag is not None]

    def teardown(self, stage: str) -> None:
        # Each process flagged the unreadable images its own share met: the run counts them all.
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        for flags in self._skip_flags():
            everyone = flags.to(device)  # NCCL reduces only tensors on the GPU
            torch.distributed.all_reduce(everyone, op=torch.distributed.ReduceOp.MAX)
            flags.copy_(everyone.cpu())

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits = self.load_splits()
        if "val" not in splits:
            train = splits["train"]
            generator = torch.Generator().manual_seed(self.split_seed)
            order = torch.randperm(len(train), generator=generator)
            num_val = max(1, int(round(len(train) * self.val_fraction)))
            splits["val"] = train.subset(order[:num_val])
            splits["train"] = train.subset(order[num_val:])
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if self.on_device and self.num_workers == 0 and device is not None and device.type != "cpu":
            splits = {
                name: split.to(device) if isinstance(split, Split) else split
                for name, split in splits.items()
            }
        self.splits = splits

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        pipeline = self.pipeline if split == "train" else None
        source = self.splits[split]
        dataset, collate = source.dataset(pipeline, self.with_masks)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank, world_size = (
            (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
        )
        if shuffle and (distributed or not isinstance(source, Split)):
            # Every image once per epoch in every process's share, and exact mid-epoch resumes.
            # The same in every process, and set by seed_everything (or 0 without it).
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
            batches = Batches(
                dataset,
                collate,
                self.batch_size,
                rank,
                world_size,
                seed=seed,
                blocks=getattr(source, "blocks", None),
            )
            epoch = (lambda: self.trainer.current_epoch) if self.trainer is not None else None
            self._training_loader = TrainingLoader(batches, self.num_workers, epoch)
            if self._resume_position is not None:
                self._training_loader.resume_at(self._resume_position)
            return self._training_loader
        if not shuffle and distributed:  # every image once, the same number of batches each
            batches = Batches(dataset, collate, self.batch_size, rank, world_size)
            return DataLoader(
                batches,
                batch_size=None,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
                multiprocessing_context=worker_start(self.num_workers),
            )
        # In memory in one process (the fast path), and evaluation in one process.
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
            multiprocessing_context=worker_start(self.num_workers),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
