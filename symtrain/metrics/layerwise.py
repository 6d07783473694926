"""Equivariance of each stage's feature map."""

from __future__ import annotations

from torch import Tensor

from symtrain.metrics.base import Batch, Measure, Record
from symtrain.metrics.functional import SpreadRelativeError
from symtrain.transforms import TransformFamily


class LayerwiseError(Measure):
    """E‖Φ(g·x) − g′·Φ(x)‖² / E‖Φ(x) − Φ(z)‖² for each stage's feature map Φ (uncentred, per
    cell), where g′ is g's action on that stage as the backbone declares it (a permutation of
    cells, and of escnn's field channels). rot90 and flip act exactly; a circular shift by t
    pixels acts on a map of cumulative stride s as the band-limited (Fourier) shift by t/s
    cells, measured for the sub-cell diagonal shifts t in {1, s/2, s-1}, so aliasing shows: a
    max-pooled map does not follow a one-pixel shift, a blurred one nearly does. 0 means the
    stage is exactly equivariant; only exact families are measured.
    """

    key = "layer"
    needs = frozenset({"stages"})
    stages = ("test",)  # a diagnostic of the final model: the fit's trend does without its cost
    title = "layer-wise equivariance error"
    table = False  # a figure, one curve per approach

    def applies(self, family: TransformFamily) -> bool:
        return family.exact

    def update(self, batch: Batch, family: TransformFamily, record: Record, prefix: str) -> None:
        net, backbone = batch.net, batch.layered
        if backbone is None:
            return
        strides = backbone.layer_strides()
        per_layer: dict[str, list[Tensor]] = {}
        for name, stride in strides.items():
            elements = family.layer_elements(stride)
            if elements is not None:
                per_layer[name] = list(elements)
        if not per_layer:
            return
        reference = batch.once("layers", lambda: backbone.layer_outputs(net.normalize(batch.images)))
        moved_by: dict[tuple[float, ...], dict[str, Tensor]] = {}
        for name, elements in per_layer.items():
            referenced = False
            for element in elements:
                expected = backbone.act_on_layer(name, family, element, reference[name])
                if expected is None:
                    continue
                key = tuple(element.tolist())
                if key not in moved_by:
                    moved = family.apply(batch.images, batch.elements(element))
                    moved_by[key] = backbone.layer_outputs(net.normalize(moved))
                error = record.metric(
                    f"{prefix}/{self.key}/{name}", lambda: SpreadRelativeError(centre=False)
                )
                if not referenced:
                    error.update_reference(reference[name])
                    referenced = True
                error.update(moved_by[key][name], expected)
