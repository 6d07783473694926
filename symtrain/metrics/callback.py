"""The Lightning callback that measures every run's invariance the same way.

It schedules the measures (one class per file in this package, chosen with ``measures``),
picks the measured subset and logs the values under ``{stage}/equiv/{family}/{key}``: at the
end of validation every ``every_n_epochs`` epochs and at the last one, and at test (with the
curves). Values are torchmetrics states, so they are reduced correctly across processes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from symtrain.metrics.base import Measure, Settings, measures_for
from symtrain.metrics.measuring import curve_points, default_families, measure
from symtrain.transforms import TransformFamily


class EquivarianceMetrics(pl.Callback):
    """Measure invariance and equivariance of the model under transformation families.

    Args:
        families: families to measure (default: rot90, flip, circular_shift, shift, rotation).
        measures: the measures' keys (default: every measure of the task but the opt-in
            ``lie_layers``): ``acc``, ``invariance_error`` (classification) or
            ``equivariance_error`` (segmentation), ``round_trip_error``, ``consistency``,
            ``massc`` (segmentation), ``jaggedness`` (classification), ``lie``, ``diffeo``
            (classification), ``layer``, ``lie_layers`` (classification), ``curve``.
        num_samples: size of the measured subset of the validation split during fit (kept
            small: it only follows the trend).
        test_num_samples: size of the measured subset of the test split (the reported values).
        every_n_epochs: measure at the end of every n-th validation epoch (and the last one).
        batch_size: images per forward pass while measuring; None: 64 on the CPU, whose caches
            hold a small batch's maps (a forward pass of the quickstart network on 44-pixel
            canvases runs 1.5x faster per image in batches of 64 than of 192), 256 elsewhere.
            The values do not depend on it: every draw is seeded by the image's place in the
            subset, and the measures add up over batches.
        draws: random pairs of elements per image for ``consistency``.
        angle_step: spacing in degrees of the score-vs-angle curve (0 turns it off).
        max_shift: largest shift in pixels of the score-vs-shift curve (0 turns it off).
        seed: seeds the subset and the random draws (the same on every run of the same data).
        diffeo_delta: typical displacement δ in pixels of ``diffeo``'s deformations.
        diffeo_cut: high-frequency cut-off c of ``diffeo``'s deformations.
        layerwise: only so that runs configured before ``measures`` existed still test and
            resume; ``false`` leaves ``layer`` out of the default measures.
    """

    def __init__(
        self,
        families: list[TransformFamily] | None = None,
        measures: list[str] | None = None,
        num_samples: int = 64,
        test_num_samples: int = 192,
        every_n_epochs: int = 2,
        batch_size: int | None = None,
        draws: int = 2,
        angle_step: float = 15.0,
        max_shift: int = 8,
        seed: int = 0,
        diffeo_delta: float = 1.0,
        diffeo_cut: int = 3,
        layerwise: bool | None = None,
    ) -> None:
        super().__init__()
        self.families = default_families() if families is None else list(families)
        self.measures = None if measures is None else list(measures)
        self._left_out = {"layer"} if layerwise is False else set()
        self.num_samples = num_samples
        self.test_num_samples = test_num_samples
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.settings = Settings(
            draws=draws,
            angle_step=angle_step,
            max_shift=max_shift,
            seed=seed,
            diffeo_delta=diffeo_delta,
            diffeo_cut=diffeo_cut,
        )
        self.curves: dict[str, dict[str, list[float]]] = {}
        # Wall-clock seconds spent measuring, per stage (``val``, ``test``): what a run pays for them.
        self.seconds: dict[str, float] = defaultdict(float)
        self._subsets: dict[tuple[str, int], Any] = {}

    def chosen(self, task: str) -> list[Measure]:
        """The measures of ``task`` this callback runs."""
        return [
            cls(self.settings) for cls in measures_for(task, self.measures) if cls.key not in self._left_out
        ]

    def describe(self, task: str) -> list[dict[str, Any]]:
        """Each chosen measure's key, title, caption and definition (for ``summary.json``)."""
        return [measure.describe() for measure in self.chosen(task)]

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1
        validating_alone = trainer.state.fn != TrainerFn.FITTING  # `symtrain validate`: always measure
        if validating_alone or epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs:
            self.measure(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.measure(trainer, pl_module, "test")

    def _subset(
        self, trainer: pl.Trainer, stage: str, device: torch.device, segmentation: bool
    ) -> tuple[Tensor, Tensor, Tensor, int]:
        """This process's images and targets of the measured subset, their positions in the
        whole subset, and its size."""
        split = trainer.datamodule.splits[stage]
        count = min(self.test_num_samples if stage == "test" else self.num_samples, len(split))
        key = (stage, id(split))
        if key not in self._subsets:
            # The split picks it (decoding it, for splits read from disk): once per run.
            self._subsets[key] = split.sample(count, self.settings.seed)
        subset = self._subsets[key]
        count = len(subset)
        # Each process measures its own share of the same fixed subset.
        positions = torch.arange(trainer.global_rank, count, trainer.world_size)
        index = positions.to(subset.labels.device)
        images = subset.images[index].to(device).float().div_(255)  # (N, C, H, W) in [0, 1]
        targets = subset.masks[index] if segmentation else subset.labels[index]  # (N, H, W) or (N,)
        return images, targets.to(device).long(), positions, count

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> dict[str, float]:
        """Run every chosen measure of ``stage`` on its subset, log the values and return them."""
        started = time.perf_counter()
        was_training = pl_module.training
        pl_module.eval()
        segmentation = getattr(pl_module, "segmentation", False)
        measures = [
            m for m in self.chosen("segmentation" if segmentation else "classification") if stage in m.stages
        ]
        images, targets, positions, count = self._subset(trainer, stage, pl_module.device, segmentation)
        values = measure(
            pl_module.net,
            (images, targets),
            self.families,
            [m.key for m in measures],
            settings=self.settings,
            batch_size=self.batch_size,
            stage=stage,
            device=pl_module.device,
            positions=positions,
            subset_size=count,
            strict=False,  # a strategy's wrapper declares no stages: its run leaves those out
        )
        curves = [m for m in measures if m.key == "curve"]
        for name, value in values.items():
            if not any(f"/{m.key}/" in name for m in curves):
                pl_module.log(name, value, sync_dist=False)  # already reduced across processes
        for curve in curves:
            self.curves.update(curve_points(values, stage, curve.axes, "miou" if segmentation else "acc"))
        pl_module.train(was_training)
        self.seconds[stage] += time.perf_counter() - started
        return values
