"""Relative stability to diffeomorphisms (Petrini et al. 2021, "Relative stability toward
diffeomorphisms indicates performance in deep nets")."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric

from symtrain.metrics.base import Batch, Measure, Record
from symtrain.metrics.functional import SpreadRelativeError
from symtrain.transforms import Diffeo, TransformFamily


class StabilityRatio(Metric):
    """R_f = Σ‖f(τx) − f(x)‖² / Σ‖f(x + η) − f(x)‖² over images and draws: D_f / G_f, whose
    common denominator cancels. 0 when nothing moves under the deformations.

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
    """R_f = D_f / G_f (Petrini et al. 2021): D_f = E‖f(τx) − f(x)‖² / E‖f(x) − f(z)‖² for
    maximum-entropy smooth diffeomorphisms τ (the ``Diffeo`` family: sine modes up to the
    cut-off c = ``diffeo_cut``, temperature T = 4δ²/(π n² ln c) for the typical displacement
    δ = ``diffeo_delta`` pixels), G_f the same for Gaussian noise x + η with ‖η‖ = ‖τx − x‖ per
    image, f the logits as they are and x, z two different images of the subset; ``draws`` (τ,
    η) pairs per image, seeded. R_f < 1: the model is moved less by the smooth deformation than
    by noise of the same size (the paper finds test error ≈ 0.2·√R_f on CIFAR-10); the
    identity map gives 1, a deformation-invariant model 0. R_f also for each stage's feature
    map (``diffeo/R_f/layer/{stage}``).

    Means over images, where the paper's code takes medians; the noise is added to the images
    in [0, 1] (the paper's: after per-channel standardisation, the same for one channel).
    """

    key = "diffeo"
    title = "relative stability to diffeomorphisms"
    caption = (
        "Relative stability to diffeomorphisms: D_f, G_f and R_f = D_f / G_f of the logits (R_f < 1: stable)"
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
        d_f = record.metric(f"{prefix}/diffeo/D_f", lambda: SpreadRelativeError(centre=False))
        g_f = record.metric(f"{prefix}/diffeo/G_f", lambda: SpreadRelativeError(centre=False))
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
            record.metric(f"{prefix}/diffeo/R_f", StabilityRatio).update(on_deformed, on_noisy, reference)
            for name, features in moved.items():
                on_deformed, on_noisy = features.split(len(images))
                ratio = record.metric(f"{prefix}/diffeo/R_f/layer/{name}", StabilityRatio)
                ratio.update(on_deformed, on_noisy, layers[name])
