"""Measure any network: the one implementation of "measure this network" that the callback (a
run's own validation and test), ``python -m symtrain measure`` and ``symtrain.measure()`` call.

A network here is anything that maps a float image batch in [0, 1], (B, C, H, W), to logits
(B, K) or per-pixel logits (B, K, H, W): a symtrain run's network, a timm or torchvision model
behind its normalisation, a user's own module. The measured images stream through in batches
(a tensor is cut into them, a DataLoader yields them), so memory does not grow with their
number; each image's random draws are seeded by its place in the measured set, so the values
do not depend on the batch size or on how the images are shared among processes.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.data import DataLoader

from symtrain.errors import SymtrainError
from symtrain.metrics.base import Batch, Measure, Record, Settings, measures_for, stages_of
from symtrain.transforms import CircularShift, Flip, Rot90, Rotation, Shift, TransformFamily

Precision = Literal["32", "bf16"]
Network = Callable[[Tensor], Tensor]

# What each need of a measure (Measure.needs) is, for the one line that refuses it.
NEEDS = {
    "labels": "labels that map onto the model's outputs",
    "stages": "a backbone's declared stages (symtrain's networks)",
}


def default_families() -> list[TransformFamily]:
    """The families measured when none are named: rot90, flip, circular shift, shift, rotation."""
    return [Rot90(), Flip(), CircularShift(), Shift(), Rotation()]


def measure(
    net: Network,
    data: Tensor | tuple[Tensor, Tensor] | DataLoader | Any,
    families: Sequence[TransformFamily] | None = None,
    measures: Sequence[str] | None = None,
    *,
    targets: Tensor | None = None,
    settings: Settings | None = None,
    num_samples: int = 192,
    batch_size: int | None = None,
    stage: str = "test",
    device: str | torch.device | None = None,
    precision: Precision = "32",
    positions: Tensor | None = None,
    subset_size: int | None = None,
    strict: bool = True,
) -> dict[str, float]:
    """Measure ``net``'s invariance and equivariance with the literature's measures.

    Args:
        net: any callable from float images in [0, 1], (B, C, H, W), to logits (B, K) or
            per-pixel logits (B, K, H, W) at the images' size (normalisation inside); an
            ``nn.Module`` is measured in eval mode (and put back as it was).
        data: the images: a tensor (N, C, H, W) (floats in [0, 1], or uint8 in 0..255), a tuple
            (images, targets), a DataLoader yielding images or (images, targets, ...) batches
            over a dataset with a length, or a symtrain data module (the seeded, class-stratified
            subset of ``num_samples`` images of its test split that a run's test measures).
        families: the transformation families (default: rot90, flip, circular shift, shift,
            rotation).
        measures: the measures' keys (default: every default measure of the task that the model
            and data allow: those needing labels without labels, and those needing stages on a
            network that declares none, are left out).
        targets: class indices (N,), or masks (N, H, W) for per-pixel logits, in the model's
            own indexing, when ``data`` is a tensor.
        settings: the measures' settings (draws, curves' spacing, seed, ...).
        num_samples: the subset's size when ``data`` is a data module.
        batch_size: images per forward pass when ``data`` is a tensor (default: 64 on the CPU,
            256 elsewhere); the values do not depend on it.
        stage: the values' first name segment (``test/equiv/rot90/consistency``).
        device: where to measure (default: where the network's parameters are, else the CPU).
        precision: ``32``, or ``bf16`` (autocast: faster on recent hardware, with exactness
            figures at bfloat16's rounding, about 1e-2 relative, instead of float32's 1e-6).
        positions: the images' places in the whole measured set, when this process measures a
            share of it (the callback under DDP); default 0, 1, 2, ...
        subset_size: the size of that whole set (default: the number of images given).
        strict: refuse a named measure the model or data cannot give (one line saying what it
            needs); False leaves it out silently, as a run's callback does.

    Returns:
        The values by name: ``{stage}/equiv/{family}/{key}`` (per family), ``{stage}/lie/...``,
        ``{stage}/diffeo/...`` (measures of no family), and the curves' points.

    Raises:
        SymtrainError: for output that is not logits, images the network cannot run on, a
            family the images cannot carry, or a measure the model or data cannot give.

    Examples:
        >>> net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 3))
        >>> values = measure(net, torch.rand(8, 1, 12, 12), [Rot90()], ["invariance_error"])
        >>> values["test/equiv/rot90/invariance_error"] < 1e-6  # pooling is rotation-invariant
        True
    """
    settings = settings or Settings()
    families = default_families() if families is None else list(families)
    batches, count = _batches(data, targets, batch_size, num_samples, settings.seed, device, net)
    subset_size = count if subset_size is None else subset_size
    was_training = net.training if isinstance(net, nn.Module) else None
    if isinstance(net, nn.Module):
        net.eval()
    try:
        return _measure_batches(
            net, batches, families, measures, settings, stage, precision, positions, subset_size, strict
        )
    finally:
        if was_training:
            net.train()


def _measure_batches(
    net: Network,
    batches: Iterator[tuple[Tensor, Tensor | None]],
    families: list[TransformFamily],
    keys: Sequence[str] | None,
    settings: Settings,
    stage: str,
    precision: Precision,
    positions: Tensor | None,
    subset_size: int,
    strict: bool,
) -> dict[str, float]:
    record: Record | None = None
    chosen: list[Measure] = []
    measured: Network = net
    task = "classification"
    outputs = 0
    done = 0
    with torch.inference_mode():
        for images, targets in batches:
            if record is None:  # the first batch: what the network gives, and so what to measure
                task, outputs = probe(net, images)
                check_families(families, *images.shape[-2:])
                labelled, staged = targets is not None, stages_of(net) is not None
                chosen = choose(task, keys, settings, stage, labelled, staged, strict)
                measured = measured_network(net, images) if isinstance(net, nn.Module) else net
                record = Record(images.device)
            where = (
                torch.arange(done, done + len(images))
                if positions is None
                else positions[done:][: len(images)]
            )
            done += len(images)
            batch = Batch(
                measured, images, targets, task == "segmentation", outputs, where, subset_size, settings.seed
            )
            with autocast(images.device, precision):
                for measure in chosen:
                    if not measure.per_family:
                        measure.update(batch, None, record, stage)
                        continue
                    for family in families:
                        if measure.applies(family):
                            measure.update(batch, family, record, f"{stage}/equiv/{family.name}")
    if record is None:
        raise SymtrainError("no images to measure: the data is empty")
    # One read of every value (rather than a host sync per metric).
    computed = [metric.compute().float() for metric in record.metrics.values()]
    return dict(zip(record.metrics, torch.stack(computed).tolist() if computed else [], strict=True))


def choose(
    task: str,
    keys: Sequence[str] | None,
    settings: Settings,
    stage: str,
    labelled: bool,
    staged: bool,
    strict: bool = True,
) -> list[Measure]:
    """The measures of ``task`` at ``stage`` named by ``keys`` (None: the defaults) that the data
    (``labelled``) and the network (``staged``: it declares stages) allow.

    Raises:
        SymtrainError: with ``strict``, for a named measure that needs what is missing.
    """
    have = {"labels"} if labelled else set()
    have |= {"stages"} if staged else set()
    chosen = []
    for cls in measures_for(task, None if keys is None else list(keys)):
        missing = sorted(cls.needs - have)
        if missing and keys is not None and strict:
            need = missing[0]
            needing = sorted({c.key for c in [*measures_for(task, None), cls] if need in c.needs})
            raise SymtrainError(
                f"measure {cls.key!r} needs {NEEDS[need]}, which "
                + ("this data does not give" if need == "labels" else "this model does not declare")
                + f": leave it out of metrics.measures (measures needing {need}: {', '.join(needing)})"
            )
        if not missing and stage in cls.stages:
            chosen.append(cls(settings))
    return chosen


def probe(net: Network, images: Tensor) -> tuple[str, int]:
    """The task the network's output says (``classification`` for (B, K) logits,
    ``segmentation`` for (B, K, H, W) at the images' size) and its number of outputs K."""
    shape = "x".join(map(str, images.shape[1:]))
    try:
        with torch.no_grad():
            output = net(images[:1])
    except SymtrainError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure here is the input's size or layout
        reason = " ".join(str(error).split()) or type(error).__name__
        raise SymtrainError(
            f"the model cannot run on {shape} images ({reason[:160]}): give it images of the size and "
            "channels it takes (--data.image_size, --data.channels)"
        ) from None
    if not isinstance(output, Tensor):
        raise SymtrainError(
            f"the model returns {type(output).__name__}, not a tensor of logits: wrap it so that it "
            "returns (B, K) logits or (B, K, H, W) per-pixel logits"
        )
    if output.ndim == 2 and len(output) == 1:
        return "classification", output.shape[1]
    if output.ndim == 4 and len(output) == 1 and output.shape[-2:] == images.shape[-2:]:
        return "segmentation", output.shape[1]
    raise SymtrainError(
        f"the model's output on one {shape} image is {tuple(output.shape)}: the measures need (B, K) logits "
        f"or (B, K, {images.shape[-2]}, {images.shape[-1]}) per-pixel logits at the image's size"
    )


def check_families(families: list[TransformFamily], height: int, width: int) -> None:
    """Refuse a family whose elements the images cannot carry (:meth:`TransformFamily.size_problem`).

    Raises:
        SymtrainError: naming the family, the size and the fix.
    """
    for family in families:
        if problem := family.size_problem(height, width):
            raise SymtrainError(
                f"family {family.name} cannot be measured on {height}x{width} images: {problem}"
            )


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` for ``bf16``, nothing for ``32``."""
    if precision == "32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise SymtrainError(f"precision {precision!r} is not one of 32, bf16: pass --precision 32 or bf16")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _batches(
    data: Any,
    targets: Tensor | None,
    batch_size: int | None,
    num_samples: int,
    seed: int,
    device: str | torch.device | None,
    net: Network,
) -> tuple[Iterator[tuple[Tensor, Tensor | None]], int]:
    """(images in [0, 1] on the device, targets or None) batches of ``data``, and their total
    number."""
    if device is None:
        parameter = next(net.parameters(), None) if isinstance(net, nn.Module) else None
        device = parameter.device if parameter is not None else torch.device("cpu")
    device = torch.device(device)
    if hasattr(data, "splits") and hasattr(data, "setup"):  # a symtrain data module
        data.setup("test")
        split = data.splits[data.test_split if data.test_split in data.splits else "test"]
        subset = split.sample(min(num_samples, len(split)), seed)
        with_masks = getattr(data, "with_masks", False) and subset.masks is not None
        data, targets = subset.images, subset.masks if with_masks else subset.labels
    if isinstance(data, tuple):
        data, targets = data
    if isinstance(data, Tensor):
        if targets is not None and len(targets) != len(data):
            raise SymtrainError(f"{len(data)} images but {len(targets)} targets: pass one target per image")
        size = batch_size or (64 if device.type == "cpu" else 256)
        parts = (
            (data[start : start + size], None if targets is None else targets[start : start + size])
            for start in range(0, len(data), size)
        )
        return on_device(parts, device), len(data)
    if isinstance(data, DataLoader):
        try:
            count = len(data.dataset)
        except TypeError:
            raise SymtrainError(
                "the DataLoader's dataset has no length: the measures seed each image's draws by its place "
                "in the whole set, so pass a dataset with __len__ (or a tensor of images)"
            ) from None
        parts = (
            (b[0], b[1]) if isinstance(b, (tuple, list)) and len(b) > 1 else (_first(b), None)
            for b in data
            if b is not None  # every image of the batch unreadable, and skipped
        )
        return on_device(parts, device), count
    raise SymtrainError(
        f"cannot measure on {type(data).__name__}: pass a tensor of images, (images, targets), a DataLoader "
        "or a symtrain data module"
    )


def _first(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def on_device(
    batches: Iterable[tuple[Tensor, Tensor | None]], device: torch.device
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(images, targets) batches on ``device``: uint8 images as floats in [0, 1], targets as int64."""
    for images, targets in batches:
        floats = images.to(device, non_blocking=True)
        floats = floats.float().div_(255) if floats.dtype == torch.uint8 else floats.float()
        yield floats, None if targets is None else targets.to(device).long()


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


def curve_points(
    values: dict[str, float], stage: str, axes: dict[str, tuple[str, str]], score: str
) -> dict[str, dict[str, list[float]]]:
    """The curves among measured ``values`` (``{stage}/equiv/{curve}/curve/{x}``), as
    ``summary.json`` keeps them: ``{stage}/{curve}`` -> {axis: xs, score: ys}.

    Examples:
        >>> values = {"test/equiv/rotation/curve/15": 0.5, "test/equiv/rotation/curve/0": 1.0}
        >>> curve_points(values, "test", {"rotation": ("angle", "degrees")}, "acc")
        {'test/rotation': {'angle': [0.0, 15.0], 'acc': [1.0, 0.5]}}
    """
    curves = {}
    for name, (axis, _) in axes.items():
        marker = f"{stage}/equiv/{name}/curve/"
        points = sorted((float(k[len(marker) :]), v) for k, v in values.items() if k.startswith(marker))
        if points:
            curves[f"{stage}/{name}"] = {axis: [p[0] for p in points], score: [p[1] for p in points]}
    return curves
