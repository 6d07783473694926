"""Base class for image data held in memory as tensors.

Every dataset symtrain ships is small enough to live in memory as uint8 tensors, so loading is
never the bottleneck: a subclass only says how to produce its splits, this class does the
rest (validation carve-out, loaders, the facts the model needs linked into it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset


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


class SplitDataset(Dataset):
    """Map-style view over a :class:`Split`: yields (image uint8 (C, H, W), label), and the
    mask (H, W) too when ``with_masks``.

    The DataLoader fetches a whole batch with one indexing operation (``__getitems__``)
    instead of indexing and stacking sample by sample.
    """

    def __init__(self, split: Split, with_masks: bool = False) -> None:
        self.split = split
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.split)

    def _take(self, index: int | torch.Tensor) -> tuple[torch.Tensor, ...]:
        split = self.split
        if self.with_masks:
            return split.images[index], split.labels[index], split.masks[index]
        return split.images[index], split.labels[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return self._take(index)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        # (B, C, H, W), (B,) [, (B, H, W)]. For splits held on a GPU the sampler's indices
        # are copied there without blocking: a blocking copy from host memory waits for
        # everything queued on the device, a sync at every step.
        index = torch.as_tensor(indices)
        return self._take(index.to(self.split.labels.device, non_blocking=True))


def keep_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The collate function of batches that :meth:`SplitDataset.__getitems__` already made."""
    return batch


class ImageDataModule(pl.LightningDataModule):
    """Base for in-memory image datasets.

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

    def __init__(
        self,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        split_seed: int = 0,
        on_device: bool = True,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.split_seed = split_seed
        self.on_device = on_device
        self.splits: dict[str, Split] = {}

    def load_splits(self) -> dict[str, Split]:
        """Return at least ``train`` and ``test`` splits (``val`` is optional)."""
        raise NotImplementedError

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
            splits = {name: split.to(device) for name, split in splits.items()}
        self.splits = splits

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = SplitDataset(self.splits[split], with_masks=self.with_masks)
        sampler = None
        if not shuffle and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning's default DistributedSampler pads the last shard with repeated samples,
            # which would count them twice in val/test metrics; this one neither pads nor drops.
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=keep_batch,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
