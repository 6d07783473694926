"""The Lightning callback that measures every run's invariance the same way.

It schedules the measures (one class per file in this package, chosen with ``measures``),
picks the measured subset and logs the values under ``{stage}/equiv/{family}/{key}``: at the
end of validation every ``every_n_epochs`` epochs and at the last one, and at test (with the
curves). Values are torchmetrics states, so they are reduced correctly across processes.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from symtrain.metrics.base import Batch, Measure, Record, Settings, measures_for
from symtrain.transforms import CircularShift, Flip, Rot90, Rotation, Shift, TransformFamily


def measured_network(net: nn.Module, images: Tensor) -> nn.Module:
    """The network the measures run (eval mode): :func:`measuring_copy` where it gives the same
    function, else ``net`` itself. Not for a network that decides something discrete per input
    (a canonical pose: the copy's other rounding could flip a near-tie, and with it a measured
    value), nor where the copy cannot be made or run (a layer that needs the default layout, a
    module that cannot be copied): those are measured as they are, on every process alike."""
    if images.device.type != "cpu" or any(_decides_per_input(module) for module in net.modules()):
        return net
    try:
        with torch.inference_mode(False):  # ordinary tensors: the copy may be differentiated (jvp)
            fast = measuring_copy(net)
        with torch.no_grad():
            fast(images[:1])
    except Exception:  # noqa: BLE001 - any failure of the copy leaves the network itself to measure
        return net
    return fast


def _decides_per_input(module: nn.Module) -> bool:
    from symtrain.symmetry.base import StrategyNet

    return isinstance(module, StrategyNet) and type(module).choices is not StrategyNet.choices


def measuring_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` (in eval mode) made for inference on the CPU: each convolution
    followed by a batch norm in a ``Sequential`` folded into one convolution (torch's
    ``fuse_conv_bn_eval``) and the weights in channels-last order, which oneDNN's convolutions
    and poolings run fastest in. The quickstart network's forward pass on 192 digits runs about
    1.9x faster so, to the same logits up to rounding (1e-8). Batch norms called by name (timm's
    blocks) stay as they are."""
    fast = copy.deepcopy(net)
    for module in fast.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module._modules.items())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:], strict=False):
            foldable = type(norm) is nn.BatchNorm2d and norm.track_running_stats and not norm.training
            if isinstance(conv, nn.Conv2d) and foldable:
                module._modules[conv_name] = fuse_conv_bn_eval(conv, norm)
                module._modules[norm_name] = nn.Identity()
    return fast.to(memory_format=torch.channels_last)


def default_families() -> list[TransformFamily]:
    return [Rot90(), Flip(), CircularShift(), Shift(), Rotation()]


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
        net = measured_network(pl_module.net, images)
        record = Record(pl_module.device)
        num_classes = getattr(pl_module, "num_outputs", 0)
        seed = self.settings.seed
        with torch.no_grad():
            size = self.batch_size or (64 if images.device.type == "cpu" else 256)
            for start in range(0, len(images), size):
                part = slice(start, start + size)
                batch = Batch(
                    net,
                    images[part],
                    targets[part],
                    segmentation,
                    num_classes,
                    positions[part],
                    count,
                    seed,
                )
                for measure in measures:
                    if not measure.per_family:
                        measure.update(batch, None, record, stage)
                        continue
                    for family in self.families:
                        if measure.applies(family):
                            measure.update(batch, family, record, f"{stage}/equiv/{family.name}")
        # One read of every value (rather than a host sync per metric).
        computed = [metric.compute().float() for metric in record.metrics.values()]
        values = dict(zip(record.metrics, torch.stack(computed).tolist() if computed else [], strict=True))
        curves = [m for m in measures if m.key == "curve"]
        for name, value in values.items():
            if not any(f"/{m.key}/" in name for m in curves):
                pl_module.log(name, value, sync_dist=False)  # already reduced across processes
        for measure in curves:
            self._store_curves(values, stage, measure, "miou" if segmentation else "acc")
        pl_module.train(was_training)
        self.seconds[stage] += time.perf_counter() - started
        return values

    def _store_curves(self, values: dict[str, float], stage: str, measure: Any, score: str) -> None:
        for family, (axis, _) in measure.axes.items():
            marker = f"{stage}/equiv/{family}/{measure.key}/"
            points = sorted((float(k[len(marker) :]), v) for k, v in values.items() if k.startswith(marker))
            if points:
                self.curves[f"{stage}/{family}"] = {
                    axis: [p[0] for p in points],
                    score: [p[1] for p in points],
                }
