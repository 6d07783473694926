"""Relative stability to diffeomorphisms (Petrini et al. 2021, "Relative stability toward
diffeomorphisms indicates performance in deep nets"), by the medians of the paper's code."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from symtrain.metrics.base import Batch, Measure, Record
from symtrain.transforms import Diffeo, TransformFamily

# A stage's map has C·h·w coordinates per image, and the medians need every image's value at
# every coordinate: beyond this many, R_f of the stage is measured on this many of them, drawn
# once (seeded). 2 x 384 rows (192 images, 2 draws) x 8192 float32s is 25 MB per stage.
MAX_COORDINATES = 8192


def median_sum(squared: Tensor) -> Tensor:
    """Σ_k median_n squared[n, k]: the median over the rows (images and draws) of each
    coordinate's squared change, summed over the coordinates, in float64; the reference's
    ``(fd - f0).pow(2).median(0).values.sum()``. torch's median of an even count is the lower
    of the two middle values, as the reference's (which is torch's too).

    Examples:
        >>> median_sum(torch.tensor([[1.0, 10.0], [2.0, 20.0], [300.0, 30.0]])).item()  # 2 + 20
        22.0
    """
    return squared.median(dim=0).values.double().sum()


def pair_median(outputs: Tensor) -> Tensor:
    """The median of ‖f(x) − f(z)‖² over all ordered pairs (x, z) of the subset's outputs
    (N, K), x = z included: the reference's ``torch.cdist(f0, f0).pow(2).median()``, here with
    the differences taken directly (no matrix-product shortcut, so the diagonal is exactly 0).

    Examples:
        >>> pair_median(torch.tensor([[0.0], [1.0], [3.0]])).item()  # 0,0,0,1,1,4,4,9,9
        1.0
    """
    outputs = outputs.double()
    return torch.cdist(outputs, outputs, compute_mode="donot_use_mm_for_euclid_dist").pow(2).median()


class MedianStability(Metric):
    """D_f or G_f by the reference's medians: Σ_k median_{x,τ} (f_k(τx) − f_k(x))² over the
    median of ‖f(x) − f(z)‖² over the subset's pairs (:func:`median_sum` over
    :func:`pair_median`). The per-row squared changes and the reference outputs are kept (cat
    states, gathered across processes) for the medians. 0 when nothing moves.

    Examples:
        >>> d_f = MedianStability()
        >>> reference = torch.tensor([[0.0], [1.0], [3.0]])  # pair median 1
        >>> d_f.update_reference(reference)
        >>> d_f.update(reference + torch.tensor([[1.0], [2.0], [4.0]]), reference)  # median 4
        >>> d_f.compute().item()
        4.0
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("changes", default=[], dist_reduce_fx="cat")
        self.add_state("outputs", default=[], dist_reduce_fx="cat")

    def update(self, moved: Tensor, reference: Tensor) -> None:
        """Add the squared changes of ``moved`` against ``reference`` (B, ...), one row per image."""
        self.changes.append((moved.double() - reference.double()).pow(2).flatten(1))

    def update_reference(self, outputs: Tensor) -> None:
        """Add the reference outputs f(x) (B, ...) of one batch (once, whatever the draws)."""
        self.outputs.append(outputs.double().flatten(1))

    def compute(self) -> Tensor:
        numerator = median_sum(dim_zero_cat(self.changes))
        return torch.where(numerator == 0, 0.0, numerator / pair_median(dim_zero_cat(self.outputs)))


class MedianStabilityRatio(Metric):
    """R_f = D_f / G_f by the reference's medians, whose common denominator cancels:
    Σ_k median (f_k(τx) − f_k(x))² / Σ_k median (f_k(x + η) − f_k(x))², the medians over the
    images and draws. 0 when nothing moves under the deformations.

    Args:
        coordinates: keep at most this many coordinates of each row (a seeded draw, the same in
            every batch and process), for feature maps too large to keep whole; None keeps all.
        dtype: the stored squared changes' type (float32 halves a feature map's memory).

    Examples:
        >>> ratio = MedianStabilityRatio()
        >>> x = torch.zeros(3, 2)
        >>> noise = torch.tensor([[1.0, 1.0], [1.0, 1.0], [9.0, 9.0]])  # one outlier, left out
        >>> ratio.update(x + 2.0, x + noise, x)  # the deformation moves f twice as far
        >>> ratio.compute().item()
        4.0
    """

    full_state_update = False

    def __init__(self, coordinates: int | None = None, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.coordinates, self.stored = coordinates, dtype
        self.chosen: Tensor | None = None
        self.add_state("deformed", default=[], dist_reduce_fx="cat")
        self.add_state("noisy", default=[], dist_reduce_fx="cat")

    def _rows(self, moved: Tensor, reference: Tensor) -> Tensor:
        squared = (moved.double() - reference.double()).pow(2).flatten(1)
        if self.coordinates is not None and squared.shape[1] > self.coordinates:
            if self.chosen is None:
                generator = torch.Generator().manual_seed(0)
                self.chosen = torch.randperm(squared.shape[1], generator=generator)[
                    : self.coordinates
                ].sort()[0]
            squared = squared[:, self.chosen.to(squared.device)]
        return squared.to(self.stored)

    def update(self, deformed: Tensor, noisy: Tensor, reference: Tensor) -> None:
        self.deformed.append(self._rows(deformed, reference))
        self.noisy.append(self._rows(noisy, reference))

    def compute(self) -> Tensor:
        numerator = median_sum(dim_zero_cat(self.deformed))
        return torch.where(numerator == 0, 0.0, numerator / median_sum(dim_zero_cat(self.noisy)))


class StabilityRatio(Metric):
    """R_f by means, the paper's written formula: Σ‖f(τx) − f(x)‖² / Σ‖f(x + η) − f(x)‖² over
    images and draws (D_f / G_f with means, whose common denominator cancels). The identity map
    gives exactly 1 (‖η‖ = ‖τx − x‖ per image); 0 when nothing moves under the deformations.

    Examples:
        >>> ratio = StabilityRatio()
        >>> x = torch.zeros(2, 3)
        >>> ratio.update(x + 2.0, x + 1.0, x)  # the deformation moves f twice as far as the noise
        >>> ratio.compute().item()
        4.0
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("deformed", "noisy"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, deformed: Tensor, noisy: Tensor, reference: Tensor) -> None:
        reference = reference.double()
        self.deformed += (deformed.double() - reference).pow(2).sum()
        self.noisy += (noisy.double() - reference).pow(2).sum()

    def compute(self) -> Tensor:
        return torch.where(self.deformed == 0, 0.0, self.deformed / self.noisy)


class RelativeStability(Measure):
    """R_f = D_f / G_f (Petrini et al. 2021), as the paper's code computes them (diffeo-sota,
    ``results/utils.py: relative_distance``, the figures and the fit test error ≈ 0.2·√R_f):
    D_f = Σ_k median_{x,τ} (f_k(τx) − f_k(x))² / median_{x,z} ‖f(x) − f(z)‖², the median over
    the images (and draws) of each logit's squared change, summed over the logits, over the
    median squared distance between the logits of two images of the subset (all ordered pairs,
    x = z included); G_f the same for Gaussian noise x + η with ‖η‖ = ‖τx − x‖ per image.
    τ: maximum-entropy smooth diffeomorphisms (the ``Diffeo`` family: sine modes up to the
    cut-off c = ``diffeo_cut``, temperature T = 4δ²/(π n² ln c) for the typical displacement
    δ = ``diffeo_delta`` pixels); f the logits as they are; ``draws`` (τ, η) pairs per image,
    seeded (the reference draws one: draws = 1 is its protocol). R_f < 1: the model is moved
    less by the smooth deformation than by noise of the same size; a deformation-invariant
    model gives 0. R_f also for each stage's feature map (``diffeo/R_f/layer/{stage}``, its
    C·h·w values as the coordinates; beyond 8192 of them, on 8192 drawn once).

    ``diffeo/R_f_mean`` is the paper's formula as written, with means over images and draws:
    Σ‖f(τx) − f(x)‖² / Σ‖f(x + η) − f(x)‖², exactly 1 for the identity map. The noise is added
    to the images in [0, 1] (the paper's: after per-channel standardisation, the same for one
    channel).
    """

    key = "diffeo"
    title = "relative stability to diffeomorphisms"
    caption = (
        "Relative stability to diffeomorphisms: D_f, G_f and R_f = D_f / G_f of the logits, by the "
        "paper's medians (R_f < 1: stable)"
    )
    tasks = ("classification",)
    stages = ("test",)
    per_family = False
    columns: ClassVar[dict[str, str]] = {"D_f": "diffeo/D_f", "G_f": "diffeo/G_f", "R_f": "diffeo/R_f"}

    def update(self, batch: Batch, family: TransformFamily | None, record: Record, prefix: str) -> None:
        deform = Diffeo(self.settings.diffeo_delta, self.settings.diffeo_cut)
        net, images = batch.net, batch.images
        backbone = batch.layered
        reference = batch.reference(deform)
        d_f = record.metric(f"{prefix}/diffeo/D_f", MedianStability)
        g_f = record.metric(f"{prefix}/diffeo/G_f", MedianStability)
        d_f.update_reference(reference)
        g_f.update_reference(reference)
        layers = (
            {}
            if backbone is None
            else batch.once("layers", lambda: backbone.layer_outputs(net.normalize(images)))
        )
        for draw in range(self.settings.draws):
            deformed = deform.apply(images, batch.sample(deform, draw))
            change = (deformed - images).flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            noise = batch.normal(draw)
            noisy = images + noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * change
            both = torch.cat([deformed, noisy])
            # one pass for the stages and the logits: the last stage's map is forward's output
            moved = backbone.layer_outputs(net.normalize(both)) if layers else {}
            outputs = net.head(list(moved.values())[-1]) if moved else net(both)
            on_deformed, on_noisy = outputs.split(len(images))
            d_f.update(on_deformed, reference)
            g_f.update(on_noisy, reference)
            record.metric(f"{prefix}/diffeo/R_f", MedianStabilityRatio).update(
                on_deformed, on_noisy, reference
            )
            record.metric(f"{prefix}/diffeo/R_f_mean", StabilityRatio).update(
                on_deformed, on_noisy, reference
            )
            for name, features in moved.items():
                on_deformed, on_noisy = features.split(len(images))
                ratio = record.metric(
                    f"{prefix}/diffeo/R_f/layer/{name}",
                    lambda: MedianStabilityRatio(MAX_COORDINATES, torch.float32),
                )
                ratio.update(on_deformed, on_noisy, layers[name])
