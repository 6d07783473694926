"""What a measure is: one class in one file of this package, found by its ``key``.

A :class:`Measure` reads one batch of the measured subset through a :class:`Batch` (which
computes each view's outputs once, whichever measures ask for them) and adds values to a
:class:`Record` of torchmetrics states, named ``{stage}/equiv/{family}/{key}`` (or
``.../{key}/{part}``), or, for a measure of no family, ``{stage}/{its own names}``
(``test/lie/rotation``). Its docstring is its definition: the report, ``summary.json`` and
the manual take the text from there. A new measure is a new module here; nothing else changes.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from symtrain.errors import SymtrainError
from symtrain.metrics.functional import visible_region
from symtrain.metrics.iou import IGNORE, JaccardIndex
from symtrain.transforms import Shift, TransformFamily

Task = str  # "classification" or "segmentation"


@dataclass(frozen=True)
class Settings:
    """What the callback passes every measure (its own arguments, shared by all).

    Attributes:
        draws: random pairs of elements per image for ``consistency``.
        angle_step: spacing in degrees of the score-vs-angle curve (0 turns it off).
        max_shift: largest shift of the score-vs-shift curve, in pixels (0 turns it off).
        seed: seeds the random draws, so every run of the same data draws the same.
        diffeo_delta: the typical displacement δ (pixels) of ``diffeo``'s deformations.
        diffeo_cut: the high-frequency cut-off c of ``diffeo``'s deformations.
    """

    draws: int = 2
    angle_step: float = 15.0
    max_shift: int = 8
    seed: int = 0
    diffeo_delta: float = 1.0
    diffeo_cut: int = 3


class Batch:
    """One batch of the measured subset, and the model's outputs for each view of it, each
    computed once however many measures read it.

    Attributes:
        net: the model in eval mode (images in [0, 1] to logits).
        images: (B, C, H, W) in [0, 1].
        targets: class labels (B,) or masks (B, H, W).
        segmentation: whether the model returns per-pixel logits.
        num_classes: the model's number of outputs.
        positions: (B,) the images' places in the whole measured subset (across processes).
        subset_size: the size of the whole measured subset.
        seed: seeds the measures' random draws (see :meth:`sample`).
    """

    def __init__(
        self,
        net: nn.Module,
        images: Tensor,
        targets: Tensor,
        segmentation: bool,
        num_classes: int,
        positions: Tensor,
        subset_size: int,
        seed: int,
    ) -> None:
        self.net, self.images, self.targets = net, images, targets
        self.segmentation, self.num_classes = segmentation, num_classes
        self.positions, self.subset_size, self.seed = positions, subset_size, seed
        self._cache: dict[Any, Any] = {}

    @property
    def layered(self) -> nn.Module | None:
        """The backbone whose stages the layer-wise measures read (:func:`stages_of`)."""
        return stages_of(self.net)

    def sample(self, family: TransformFamily, draw: int) -> Tensor:
        """Random elements of ``family`` for this batch's images, (B, P) on their device: draw
        number ``draw`` of a seeded sequence over the whole subset, so an image gets the same
        elements however the subset is cut into batches and processes."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + draw)
        everyone = family.sample(self.subset_size, generator)
        return everyone[self.positions.cpu()].to(self.images.device)

    def normal(self, draw: int) -> Tensor:
        """Standard normal noise shaped like the images, (B, C, H, W) on their device: draw
        ``draw`` for each image, seeded by its position in the subset (the same however the
        subset is cut into batches and processes)."""
        shape = self.images.shape[1:]
        noise = [
            torch.randn(
                shape, generator=torch.Generator().manual_seed((self.seed * 1_000_003 + draw) * 65_537 + p)
            )
            for p in self.positions.tolist()
        ]
        return torch.stack(noise).to(self.images)

    def once(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def elements(self, element: Tensor) -> Tensor:
        """One element for every image: (B, P) on the images' device."""
        return element.view(1, -1).expand(len(self.images), -1).to(self.images.device)

    def reference(self, family: TransformFamily) -> Tensor:
        """The outputs for the identity's view on ``family``'s frame: what g·x is compared with."""
        identity = self.elements(family.identity())
        key = ("reference", family.frame, tuple(family.canvas(self.images[:1, :1]).shape))
        return self.once(key, lambda: self.net(family.measured(self.images, identity)))

    def view(self, family: TransformFamily, element: Tensor) -> Tensor:
        """The outputs for every image moved by one ``element`` (P,) of ``family``, on its frame."""
        if bool((element == family.identity()).all()):
            return self.reference(family)
        elements = self.elements(element)
        key = ("view", repr(family), tuple(element.tolist()))
        return self.once(key, lambda: self.net(family.measured(self.images, elements)))

    def test_views(self, family: TransformFamily) -> list[tuple[Tensor, Tensor]]:
        """(elements (B, P), outputs) for each of ``family``'s test elements."""
        return [(self.elements(element), self.view(family, element)) for element in family.test_elements()]

    def views(self, family: TransformFamily, elements: Tensor) -> Tensor:
        """The outputs for each image moved by its own element, ``elements`` (B, P). Where every
        element is the identity or a test element (rot90 and flip draw from their whole group,
        which those are), the views already computed for the whole batch are read, one row per
        image; otherwise the moved images run through the network."""
        known = torch.cat([family.identity()[None], family.test_elements()]).to(elements)  # (K, P)
        matches = (elements[:, None] == known[None]).all(dim=-1)  # (B, K)
        if not bool(matches.any(dim=1).all()):
            return self.net(family.measured(self.images, elements))
        which = matches.float().argmax(dim=1)  # (B,), the first known element each image has
        outputs = torch.stack([self.view(family, element) for element in known.cpu()])  # (K, B, ...)
        return outputs[which, torch.arange(len(which), device=which.device)]

    def shifted(self, max_shift: int, dy: int, dx: int) -> Tensor:
        """The outputs for the images shifted by (dy, dx) pixels on a canvas zero-padded by
        ``max_shift`` (the shift family's protocol), computed once for the curve and jaggedness."""
        return self.view(Shift(max_shift), torch.tensor([float(dy), float(dx)]))

    def visible(self, family: TransformFamily, elements: Tensor) -> Tensor:
        """Where both views hold content (:func:`visible_region`) for one element shared by the
        batch, (B, 1, h, w) bool: computed once for the measures that read it."""
        key = ("visible", repr(family), tuple(elements[0].tolist()))
        return self.once(key, lambda: visible_region(family, elements, self.images))


def stages_of(net: object) -> nn.Module | None:
    """The backbone whose stages the layer-wise measures read, when ``net`` is the plain
    composition (normalise, backbone, head or decoder) they take apart and the backbone declares
    stages; None for a strategy's wrapper (group averaging, canonicalization), whose output is
    not one pass of the network inside it, and for any other network."""
    backbone = getattr(net, "backbone", None) if hasattr(net, "normalize") else None
    return backbone if backbone is not None and hasattr(backbone, "layer_strides") else None


class Record:
    """The torchmetrics states of one measurement pass, created on first use."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.metrics: dict[str, Metric] = {}

    def metric(self, name: str, make: Callable[[], Metric]) -> Metric:
        if name not in self.metrics:
            self.metrics[name] = make().to(self.device)
        return self.metrics[name]

    def mean(self, name: str, values: Tensor) -> None:
        # nan_strategy="disable": the default scans for NaNs on the host at every update (a
        # sync each), and would hide a diverged model's NaNs from the mean.
        self.metric(name, lambda: MeanMetric(nan_strategy="disable")).update(values)

    def iou(self, name: str, num_classes: int, predicted: Tensor, targets: Tensor, seen: Tensor) -> None:
        """Add class maps (B, h, w) to the mIoU ``name``, counting only the pixels ``seen``
        (B, 1, h, w)."""
        iou = self.metric(name, lambda: JaccardIndex(num_classes, ignore_index=IGNORE, validate_args=False))
        iou.update(predicted, targets.masked_fill(~seen[:, 0], IGNORE))


class Measure:
    """Base class of measures. Subclasses set the class attributes, write their definition as
    the class docstring (the formula, then how it is computed: the report shows it all) and
    implement :meth:`update`.

    Attributes:
        key: the measure's name in ``{stage}/equiv/{family}/{key}``; ``metrics.measures`` lists
            these.
        title: its name in the report.
        caption: the caption of its table in the report (one column per family).
        tasks: the tasks it measures.
        stages: the stages it measures at (``val``, ``test``).
        scale: the factor the report shows values with (100 for percentages).
        digits: decimals in the report.
        table: whether the report shows a table of it (a curve or a per-layer value does not).
        per_family: whether it is measured per family (``update`` gets each family and the
            prefix ``{stage}/equiv/{family}``), or once per batch (no family, prefix ``{stage}``).
        columns: for a measure of no family with a table, its columns: label -> the value's
            name after ``{stage}/``.
        default: whether it runs when ``metrics.measures`` is not set (costly diagnostics opt in).
        needs: what it reads besides the network and the images: ``labels`` (the task's score),
            ``stages`` (a backbone's feature maps, which only symtrain's networks declare).
    """

    key: ClassVar[str]
    title: ClassVar[str]
    caption: ClassVar[str] = ""
    tasks: ClassVar[tuple[Task, ...]] = ("classification", "segmentation")
    stages: ClassVar[tuple[str, ...]] = ("val", "test")
    scale: ClassVar[float] = 1.0
    digits: ClassVar[int] = 3
    table: ClassVar[bool] = True
    per_family: ClassVar[bool] = True
    columns: ClassVar[dict[str, str]] = {}
    default: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def applies(self, family: TransformFamily) -> bool:
        """Whether this measure has a value for ``family``."""
        return True

    def update(self, batch: Batch, family: TransformFamily, record: Record, prefix: str) -> None:
        """Measure ``batch`` under ``family``; names start with ``prefix`` (``{stage}/equiv/{family}``)."""
        raise NotImplementedError

    @classmethod
    def definition(cls) -> str:
        """The docstring on one line: what the measure is, then how it is computed where that
        differs from the paper (an ``Examples:`` section is left out)."""
        return " ".join(inspect.getdoc(cls).split("Examples:")[0].replace("``", "").split())

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """What the report needs to show this measure (kept in ``summary.json``)."""
        return {
            "key": cls.key,
            "title": cls.title,
            "caption": cls.caption,
            "definition": cls.definition(),
            "scale": cls.scale,
            "digits": cls.digits,
            "table": cls.table,
            "columns": dict(cls.columns),
        }


def registry() -> dict[tuple[Task, str], type[Measure]]:
    """Every measure by (task, key): each module of this package is imported, so a measure is
    found by being here; a subclass defined elsewhere is found once its module is imported."""
    package = importlib.import_module("symtrain.metrics")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"symtrain.metrics.{module.name}")
    found: dict[tuple[Task, str], type[Measure]] = {}
    pending = list(Measure.__subclasses__())
    while pending:
        cls = pending.pop(0)
        pending += cls.__subclasses__()
        if hasattr(cls, "key"):
            for task in cls.tasks:
                found[(task, cls.key)] = cls
    return found


ORDER = (
    "acc",
    "invariance_error",
    "equivariance_error",
    "round_trip_error",
    "consistency",
    "massc",
    "jaggedness",
    "lie",
    "diffeo",
    "layer",
    "lie_layers",
    "curve",
)


def measures_for(task: Task, keys: list[str] | None) -> list[type[Measure]]:
    """The measure classes of ``task`` named by ``keys`` (when None, this package's default ones,
    in the report's order).

    Raises:
        SymtrainError: for a key no measure of that task has.
    """
    known = {key: cls for (kind, key), cls in registry().items() if kind == task}
    if keys is None:  # the package's own measures
        own = [k for k, c in known.items() if c.__module__.startswith(f"{__package__}.") and c.default]
        keys = sorted(own, key=lambda k: (ORDER.index(k) if k in ORDER else len(ORDER), k))
    unknown = [key for key in keys if key not in known]
    if unknown:
        raise SymtrainError(
            f"unknown measure {unknown[0]!r} for {task}: choose from {', '.join(sorted(known))} "
            "(metrics.measures)"
        )
    return [known[key] for key in keys]
