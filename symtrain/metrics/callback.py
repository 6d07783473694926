"""The Lightning callback that measures every run's invariance the same way.

At the end of validation (every ``every_n_epochs`` epochs and at the last one) and at test, it
takes a fixed, seeded subset of the split, applies each transformation family's fixed test
elements, and logs under ``{val,test}/equiv/{family}/{measure}``:

- ``invariance_error``: mean over samples and elements of ||f(g x) - f(x)|| / ||f(x)|| (logits);
- ``consistency``: fraction of images whose predicted class agrees between consecutive elements
  of (identity, g_1, g_2, ...);
- ``acc``: accuracy on the transformed images, averaged over the elements;
- ``error_floor`` (interpolated families only): the same error for an exactly rotation-invariant
  reference (the radial intensity profile), i.e. what interpolation alone costs;
- ``layer/{layer}``: the equivariance error of intermediate feature maps where the backbone
  knows how the family acts on them.

At test it also records accuracy against rotation angle and against shift, which the CLI puts
in ``summary.json`` and wandb (a table and a line plot).

A segmentation model's per-pixel logits should move with the image (equivariance), so for it
the measures are:

- ``equivariance_error``: ||f(g x) - g f(x)|| / ||f(x)||, on the region both views see;
- ``consistency``: share of pixels whose predicted class agrees between f(g x) and g f(x)
  (undoing the transformation, as mASSC does), on that region;
- ``miou`` and ``acc``: mean intersection over union and pixel accuracy of f(g x) against the
  moved masks g y; the curves are mIoU against angle and shift;
- ``error_floor``: the error of an isotropic gaussian blur, exactly rotation-equivariant.

Values are torchmetrics states, so they are reduced correctly across processes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torchmetrics import MeanMetric, Metric

from symtrain.metrics.functional import (
    agreement,
    disk_mask,
    isotropic_blur,
    radial_profile,
    relative_error,
    transform_masks,
    visible_region,
)
from symtrain.metrics.iou import JaccardIndex
from symtrain.transforms import CircularShift, Flip, Rot90, Rotation, Shift, TransformFamily

# Functions exactly invariant to a family in the continuum: their measured error under the
# pixel-grid action is what interpolation alone costs.
_INVARIANT_REFERENCES = {"rotation": radial_profile}
# The same for equivariance: maps that commute with the family in the continuum.
_EQUIVARIANT_REFERENCES = {"rotation": isotropic_blur}
# Mask value of pixels that mIoU leaves out (outside the region both views see).
_IGNORE = -1


class _Shared:
    """What every family of one batch compares against, computed once: the plain and
    disk-masked inputs, their logits, and the plain input's layer outputs."""

    def __init__(self, net: Any, images: Tensor) -> None:
        self.net, self.images, self._cache = net, images, {}

    def _once(self, key: str, compute: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def inputs(self, exact: bool) -> Tensor:
        return self.images if exact else self._once("masked", lambda: disk_mask(self.images))

    def logits(self, exact: bool) -> Tensor:
        return self._once(f"logits{exact}", lambda: self.net(self.inputs(exact)))

    def layers(self) -> dict[str, Tensor]:
        return self._once("layers", lambda: self.net.backbone.layer_outputs(self.net.normalize(self.images)))


def default_families() -> list[TransformFamily]:
    return [Rot90(), Flip(), CircularShift(), Shift(), Rotation()]


class EquivarianceMetrics(pl.Callback):
    """Measure invariance and equivariance of the model under transformation families.

    Args:
        families: families to measure (default: rot90, flip, circular_shift, shift, rotation).
        num_samples: size of the fixed subset of the validation split measured during fit
            (kept small: it is measured every few epochs and only follows the trend).
        test_num_samples: size of the fixed subset of the test split (measured once; the
            values a comparison reports).
        every_n_epochs: measure at the end of every n-th validation epoch (and the last one).
        batch_size: images per forward pass while measuring.
        layerwise: also measure the equivariance error of intermediate feature maps.
        angle_step: spacing in degrees of the accuracy-vs-angle curve (0 turns it off).
        max_shift: largest shift in pixels of the accuracy-vs-shift curve (0 turns it off).
    """

    def __init__(
        self,
        families: list[TransformFamily] | None = None,
        num_samples: int = 96,
        test_num_samples: int = 192,
        every_n_epochs: int = 2,
        batch_size: int = 256,
        layerwise: bool = True,
        angle_step: float = 15.0,
        max_shift: int = 8,
    ) -> None:
        super().__init__()
        self.families = default_families() if families is None else list(families)
        self.num_samples = num_samples
        self.test_num_samples = test_num_samples
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.layerwise = layerwise
        self.angle_step = angle_step
        self.max_shift = max_shift
        self.curves: dict[str, dict[str, list[float]]] = {}
        # Wall-clock seconds spent measuring, per stage (``val``, ``test``): what a run pays for them.
        self.seconds: dict[str, float] = defaultdict(float)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1
        validating_alone = trainer.state.fn != TrainerFn.FITTING  # `symtrain validate`: always measure
        if validating_alone or epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs:
            self.measure(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.measure(trainer, pl_module, "test", with_curves=True)

    def _subset(
        self, trainer: pl.Trainer, stage: str, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        split = trainer.datamodule.splits[stage]
        count = min(self.test_num_samples if stage == "test" else self.num_samples, len(split))
        # Each process measures its own share of the same fixed subset.
        index = torch.arange(trainer.global_rank, count, trainer.world_size)
        images = split.images[index].to(device).float().div_(255)  # (N, C, H, W) in [0, 1]
        masks = None if split.masks is None else split.masks[index].to(device).long()  # (N, H, W)
        return images, split.labels[index].to(device), masks

    def measure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, with_curves: bool = False
    ) -> dict[str, float]:
        """Measure every family on ``stage``'s subset, log the values and return them."""
        started = time.perf_counter()
        was_training = pl_module.training
        pl_module.eval()
        images, labels, masks = self._subset(trainer, stage, pl_module.device)
        segmentation = getattr(pl_module, "segmentation", False)
        num_outputs = getattr(pl_module, "num_outputs", 0)
        metrics: dict[str, Metric] = {}

        def add(name: str, values: Tensor) -> None:
            # nan_strategy="disable": the default scans for NaNs on the host at every update
            # (a sync each), and would hide a diverged model's NaNs from the mean.
            metric = metrics.setdefault(name, MeanMetric(nan_strategy="disable").to(pl_module.device))
            metric.update(values)

        def add_iou(name: str, predictions: Tensor, targets: Tensor) -> None:
            if name not in metrics:
                iou = JaccardIndex(num_outputs, ignore_index=_IGNORE, validate_args=False)
                metrics[name] = iou.to(pl_module.device)
            metrics[name].update(predictions, targets)

        net = pl_module.net
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                batch = slice(start, start + self.batch_size)
                targets = masks[batch] if segmentation else labels[batch]  # (B, H, W) or (B,)
                x = images[batch]
                self._measure_batch(net, x, targets, stage, with_curves, num_outputs, add, add_iou)
        # One read of every value (rather than a host sync per metric).
        computed = [metric.compute().float() for metric in metrics.values()]
        values = dict(zip(metrics, torch.stack(computed).tolist() if computed else [], strict=True))
        for name, value in values.items():
            if "/curve/" not in name:
                pl_module.log(name, value, sync_dist=False)  # already reduced across processes
        if with_curves:
            self._store_curves(values, stage, "miou" if segmentation else "acc")
        pl_module.train(was_training)
        self.seconds[stage] += time.perf_counter() - started
        return values

    def _measure_batch(
        self,
        net: Any,
        x: Tensor,
        targets: Tensor,
        stage: str,
        with_curves: bool,
        num_outputs: int,
        add: Any,
        add_iou: Any,
    ) -> None:
        segmentation = targets.dim() == 3
        shared = _Shared(net, x)

        def score(name: str, logits: Tensor, family: TransformFamily, elements: Tensor, disk: bool) -> None:
            if not segmentation:
                add(name, (logits.argmax(dim=1) == targets).float())
                return
            moved = transform_masks(family, targets, elements, num_outputs)
            seen = visible_region(family, elements, x, disk=disk)[:, 0]
            add_iou(name, logits.argmax(dim=1), moved.masked_fill(~seen, _IGNORE))

        for family in self.families:
            prefix = f"{stage}/equiv/{family.name}"
            if segmentation:
                self._measure_family_dense(net, family, shared, targets, num_outputs, prefix, add, add_iou)
            else:
                self._measure_family(net, family, shared, targets, prefix, add)
            if self.layerwise and family.exact:
                self._measure_layers(net, family, shared, prefix, add)
        if with_curves:
            self._measure_curves(net, x, stage, score)

    def _measure_family(
        self, net: Any, family: TransformFamily, shared: _Shared, y: Tensor, prefix: str, add: Any
    ) -> None:
        # Interpolated actions are measured on the inscribed disk, where they only interpolate.
        prepare = (lambda images: images) if family.exact else disk_mask
        x, logits = shared.inputs(family.exact), shared.logits(family.exact)
        predictions = [logits.argmax(dim=1)]
        reference = _INVARIANT_REFERENCES.get(family.name)
        for element in family.test_elements():
            transformed = prepare(family.apply(x, element.expand(len(x), -1).to(x.device)))
            transformed_logits = net(transformed)
            add(f"{prefix}/invariance_error", relative_error(transformed_logits, logits))
            add(f"{prefix}/acc", (transformed_logits.argmax(dim=1) == y).float())
            predictions.append(transformed_logits.argmax(dim=1))
            if reference is not None:
                add(f"{prefix}/error_floor", relative_error(reference(transformed), reference(x)))
        for first, second in zip(predictions, predictions[1:], strict=False):
            add(f"{prefix}/consistency", agreement(first, second))

    @staticmethod
    def _measure_family_dense(
        net: Any,
        family: TransformFamily,
        shared: _Shared,
        masks: Tensor,
        num_outputs: int,
        prefix: str,
        add: Any,
        add_iou: Any,
    ) -> None:
        """Equivariance of per-pixel logits: f(g x) against g f(x), on the region both see."""
        prepare = (lambda images: images) if family.exact else disk_mask
        x, logits = shared.inputs(family.exact), shared.logits(family.exact)  # (B, C, H, W), (B, K, H, W)
        reference = _EQUIVARIANT_REFERENCES.get(family.name)
        for element in family.test_elements():
            elements = element.expand(len(x), -1).to(x.device)
            transformed = prepare(family.apply(x, elements))
            moved_logits, expected = net(transformed), family.apply(logits, elements)
            seen = visible_region(family, elements, x, disk=not family.exact)  # (B, 1, H, W)
            add(f"{prefix}/equivariance_error", relative_error(moved_logits * seen, expected * seen))
            predicted = moved_logits.argmax(dim=1)  # (B, H, W)
            add(f"{prefix}/consistency", agreement(predicted, expected.argmax(dim=1), seen))
            targets = transform_masks(family, masks, elements, num_outputs)
            add(f"{prefix}/acc", agreement(predicted, targets, seen))
            add_iou(f"{prefix}/miou", predicted, targets.masked_fill(~seen[:, 0], _IGNORE))
            if reference is not None:
                moved_reference = family.apply(reference(x), elements) * seen
                add(f"{prefix}/error_floor", relative_error(reference(transformed) * seen, moved_reference))

    @staticmethod
    def _measure_layers(net: Any, family: TransformFamily, shared: _Shared, prefix: str, add: Any) -> None:
        """Equivariance error per layer, for elements that act exactly on that layer's grid."""
        backbone = net.backbone
        elements: dict[tuple[float, ...], Tensor] = {}
        for stride in sorted(set(backbone.layer_strides().values())):
            element = family.layer_element(stride)
            if element is not None:
                elements.setdefault(tuple(element.tolist()), element)
        if not elements:
            return
        x, reference = shared.inputs(exact=True), shared.layers()
        pending = set(reference)  # each layer is measured with the first element that acts on it exactly
        for element in elements.values():
            transformed = family.apply(x, element.expand(len(x), -1).to(x.device))
            moved = backbone.layer_outputs(net.normalize(transformed))
            for name in sorted(pending):
                expected = backbone.act_on_layer(name, family, element, reference[name])
                if expected is not None:
                    pending.discard(name)
                    add(f"{prefix}/layer/{name}", relative_error(moved[name], expected))

    def _measure_curves(self, net: Any, x: Tensor, stage: str, score: Any) -> None:
        """The task's score (accuracy, or mIoU) against rotation angle and shift."""
        if self.angle_step > 0:
            masked, rotation = disk_mask(x), Rotation()
            for angle in torch.arange(0.0, 360.0, self.angle_step).tolist():
                elements = torch.full((len(x), 1), angle, device=x.device)
                rotated = disk_mask(rotation.apply(masked, elements))
                score(f"{stage}/equiv/rotation/curve/{angle:g}", net(rotated), rotation, elements, True)
        shift = Shift()
        for pixels in range(self.max_shift + 1):
            elements = torch.tensor([[0.0, float(pixels)]], device=x.device).expand(len(x), -1)
            shifted = shift.apply(x, elements)
            score(f"{stage}/equiv/shift/curve/{pixels}", net(shifted), shift, elements, False)

    def _store_curves(self, values: dict[str, float], stage: str, score: str) -> None:
        for family, axis in (("rotation", "angle"), ("shift", "pixels")):
            marker = f"{stage}/equiv/{family}/curve/"
            points = sorted((float(k[len(marker) :]), v) for k, v in values.items() if k.startswith(marker))
            if points:
                self.curves[f"{stage}/{family}"] = {
                    axis: [p[0] for p in points],
                    score: [p[1] for p in points],
                }
