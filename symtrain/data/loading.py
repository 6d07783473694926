"""How a split's images become batches: a map-style view of a split held in memory, every
process's share of an epoch (:class:`Batches`), the training loader that resumes mid-epoch, and
how loader workers start. :class:`~symtrain.data.base.ImageDataModule` builds its loaders from
them (they stay importable from :mod:`symtrain.data.base`).
"""

from __future__ import annotations

import math
import multiprocessing
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from symtrain.errors import SymtrainError

if TYPE_CHECKING:
    from symtrain.data.base import Split

# Expected by design: Batches is iterable (Lightning leaves its sharding alone) and has a length.
warnings.filterwarnings("ignore", message=r".*IterableDataset.*has `__len__` defined.*")


class SplitDataset(Dataset):
    """Map-style view over a :class:`Split`: yields (image uint8 (C, H, W), label), and the
    mask (H, W) too when ``with_masks``.

    The DataLoader fetches a whole batch with one indexing operation (``__getitems__``)
    instead of indexing and stacking sample by sample; ``transform`` (the base training
    pipeline's batch form) then acts on the batch where it lies, on the GPU for splits held there.
    """

    def __init__(
        self,
        split: Split,
        with_masks: bool = False,
        transform: Callable[..., tuple[Tensor, Tensor | None]] | None = None,
    ) -> None:
        self.split = split
        self.with_masks = with_masks
        self.transform = transform

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
        batch = self._take(index.to(self.split.labels.device, non_blocking=True))
        if self.transform is None:
            return batch
        images, labels, *masks = batch
        images, moved = self.transform(images, masks[0] if masks else None)
        return (images, labels, moved) if masks else (images, labels)


class Batches(IterableDataset):
    """A map-style dataset as this process's batches, each collated in whichever loader worker
    takes it (worker k takes batches k, k + workers, ...; the loader returns them in order).

    Every epoch takes one order of all images (the indices in order, or for training a seeded
    permutation), cuts it into one equal share per process and each share into as many batches
    as the smallest share needs. So every image is read exactly once per epoch across the
    processes, and every process takes the same number of batches: DDP's forward synchronises
    at every batch, and a process with one batch more would wait forever. The batches of a share
    are evened out: at most ``batch_size`` images (one more in rare cases), e.g. 1,000 images in
    batches of 128 are eight batches of 125.

    Written here because the libraries' samplers repeat images to even out the processes'
    shares (torch's DistributedSampler, Lightning's default), leave the rest out (litdata's
    ``drop_last``: with few shards, the same images every epoch) or give the last process more
    batches (Lightning's UnrepeatedDistributedSampler, litdata without ``drop_last``), and none
    resumes a map-style dataset mid-epoch. Being iterable, Lightning leaves its sharding alone.

    Args:
        dataset: the split as a map-style dataset (batches fetched with ``__getitems__`` when
            it has one).
        collate: makes a batch of what the dataset returns.
        batch_size: images per batch.
        rank: this process.
        world_size: processes.
        seed: seeds the training order (with the epoch; any 64-bit number); None keeps the
            images in order.
        blocks: sizes of consecutive runs of images stored together (shards): a training order
            then permutes the runs and the images within each, so that a batch reads one run.

    Examples:
        >>> parts = [Batches(list(range(103)), list, 8, rank, 2) for rank in (0, 1)]
        >>> [[len(batch) for batch in part] for part in parts]  # every image once, 7 batches each
        [[8, 8, 8, 7, 7, 7, 7], [8, 8, 7, 7, 7, 7, 7]]
    """

    def __init__(
        self,
        dataset: Dataset,
        collate: Callable[[Any], Any],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int | None = None,
        blocks: list[int] | None = None,
    ) -> None:
        self.dataset, self.collate = dataset, collate
        self.rank, self.world_size, self.seed, self.blocks = rank, world_size, seed, blocks
        self.count = len(dataset)  # type: ignore[arg-type]
        if self.count < world_size:
            raise SymtrainError(
                f"a split of {self.count} image(s) cannot be shared by {world_size} processes: "
                "use fewer processes or more images"
            )
        self.steps = max(1, math.ceil((self.count // world_size) / batch_size))
        # Which epoch to iterate, from which batch: in shared memory, so that loader workers kept
        # from one epoch to the next (persistent) read what the main process set for this one.
        self.place = torch.zeros(2, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self.place[0])

    @property
    def start(self) -> int:
        return int(self.place[1])

    def go_to(self, epoch: int, start: int) -> None:
        """Iterate epoch ``epoch`` from its batch ``start`` on."""
        self.place[0], self.place[1] = epoch, start

    def __len__(self) -> int:
        return self.steps

    def order(self, epoch: int) -> Tensor:
        """Every image's index, in epoch ``epoch``'s order (the same in every process)."""
        if self.seed is None:
            return torch.arange(self.count)
        # Each epoch its own stream (from any 64-bit seed).
        generator = torch.Generator().manual_seed((self.seed + 1_000_003 * epoch) % 2**63)
        if self.blocks is None:
            return torch.randperm(self.count, generator=generator)
        starts = torch.tensor([0, *self.blocks]).cumsum(0)
        runs = [starts[b] + torch.randperm(size, generator=generator) for b, size in enumerate(self.blocks)]
        return torch.cat([runs[b] for b in torch.randperm(len(runs), generator=generator).tolist()])

    def batches(self, epoch: int) -> list[Tensor]:
        """This process's batches of epoch ``epoch``."""
        share = self.order(epoch).tensor_split(self.world_size)[self.rank]
        return list(share.tensor_split(self.steps))

    def __iter__(self) -> Any:
        worker = get_worker_info()
        first, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        fetch = getattr(self.dataset, "__getitems__", None)
        for batch in self.batches(self.epoch)[self.start :][first::step]:
            indices = batch.tolist()
            yield self.collate(fetch(indices) if fetch else [self.dataset[i] for i in indices])


def worker_start(num_workers: int) -> str | None:
    """How loader workers start: from a fork server on Linux (None without workers, and the
    platform's own start elsewhere, which is already spawn or forkserver).

    Forking the training process itself can deadlock a worker for good under CPython 3.11: a
    child forked while another thread holds the interpreter's thread-state lock waits for it in
    ``PyOS_AfterFork_Child`` (seen here with the queue feeder threads of a loader whose workers
    persist while the next loader forks, under DDP). The fork server is a single-threaded process
    that imports torch and the data modules once; each worker is forked from it.
    """
    if num_workers == 0 or sys.platform != "linux":
        return None
    multiprocessing.set_forkserver_preload(["torch", "symtrain.data"])  # what every worker imports
    return "forkserver"


class TrainingLoader(DataLoader):
    """The loader of training :class:`Batches`, with a position (the epoch and the batches taken
    in it) that the data module saves in every checkpoint, so that a fit resumed mid-epoch takes
    the rest of that epoch's batches, neither repeating nor skipping any.

    The data module's own checkpoint state carries it, not Lightning's state of stateful loaders:
    Lightning restores that one only if the loader is first built after the checkpoint is read,
    and a one-cycle schedule builds it earlier (``estimated_stepping_batches``).

    Args:
        batches: the epochs' batches.
        num_workers: loader workers (kept from epoch to epoch).
        current_epoch: the trainer's epoch (restored with the rest of a checkpoint); None counts
            the iterations.
    """

    def __init__(
        self, batches: Batches, num_workers: int, current_epoch: Callable[[], int] | None = None
    ) -> None:
        super().__init__(
            batches,
            batch_size=None,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            multiprocessing_context=worker_start(num_workers),
        )
        self.current_epoch = current_epoch
        self.epoch, self.taken = -1, 0

    def __iter__(self) -> Any:
        finished = self.taken >= len(self)
        # Without a trainer (a loader used on its own), each iteration is the next epoch.
        epoch = self.current_epoch() if self.current_epoch else self.epoch + (finished or not self.taken)
        if epoch != self.epoch or finished:  # a new epoch; else the rest of a resumed one
            self.taken = 0
        self.epoch = epoch
        self.dataset.go_to(self.epoch, self.taken)  # type: ignore[attr-defined]
        for batch in super().__iter__():
            self.taken += 1
            yield batch

    def position(self) -> dict[str, int]:
        """Where training is (the epoch and the batches taken in it), and what cut the epoch
        into batches (the order's seed, the processes, the images and the batches per process)."""
        batches: Batches = self.dataset  # type: ignore[assignment]
        return {
            "epoch": self.epoch,
            "taken": self.taken,
            "seed": batches.seed,
            "world_size": batches.world_size,
            "count": batches.count,
            "steps": batches.steps,
        }

    def resume_at(self, position: dict[str, int]) -> None:
        """Continue from ``position`` (:meth:`position`, from a checkpoint), with its order.

        Raises:
            SymtrainError: if it stopped mid-epoch and this fit cuts the epoch otherwise
                (other processes, batch size or data): the rest of that epoch is not defined.
        """
        batches: Batches = self.dataset  # type: ignore[assignment]
        layout = {key: getattr(batches, key) for key in ("world_size", "count", "steps")}
        saved = {key: position.get(key, layout[key]) for key in layout}
        if 0 < position["taken"] < saved["steps"] and saved != layout:
            raise SymtrainError(
                f"the checkpoint stopped after batch {position['taken']} of {saved['steps']} of an epoch "
                f"of {saved['count']} images in {saved['world_size']} process(es), but this fit makes "
                f"{layout['steps']} batches of {layout['count']} in {layout['world_size']}: resume with "
                "the processes, batch size and data it started with, or from an end-of-epoch checkpoint"
            )
        batches.seed = position.get("seed", batches.seed)
        self.epoch, self.taken = position["epoch"], position["taken"]


def keep_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The collate function of batches that :meth:`SplitDataset.__getitems__` already made."""
    return batch
