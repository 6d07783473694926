"""The Lie derivative (Gruver et al. 2022, "The Lie Derivative for Measuring Learned
Equivariance"): how fast the output changes along a continuous transformation, end to end and
per stage."""

from __future__ import annotations

import copy
import warnings
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from symtrain.metrics.base import Batch, Measure, Record
from symtrain.metrics.functional import frame_region
from symtrain.transforms import Rotation, TransformFamily, disk_mask

# torch's forward-mode decompositions script themselves with torch.jit at the first jvp, and
# torch warns about its own use of torch.jit: nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

# Each generator's vector field v(p) = A p + b, in pixels per unit of t, with p = (x, y) the
# pixel's position about the image centre (x to the right, y down). t is in pixels for the
# translations, radians for the rotation (counter-clockwise as shown), log-scale for the scale,
# and the dimensionless amount of the shear and the (area-preserving) stretch.
GENERATORS: dict[str, tuple[tuple[tuple[float, float], tuple[float, float]], tuple[float, float]]] = {
    "translation_x": (((0, 0), (0, 0)), (1, 0)),
    "translation_y": (((0, 0), (0, 0)), (0, 1)),
    "rotation": (((0, 1), (-1, 0)), (0, 0)),
    "scale": (((1, 0), (0, 1)), (0, 0)),
    "shear": (((0, 1), (0, 0)), (0, 0)),
    "stretch": (((1, 0), (0, -1)), (0, 0)),
}


Boundary = Literal["reflect", "zeros"]


def _extended(features: Tensor, dim: int, boundary: Boundary) -> Tensor:
    """``features`` with one more row (``dim`` = -2) or column (-1) on each side: zeros, or the
    mirror image about the border pixels' centres (a side of one pixel repeats itself).

    Examples:
        >>> row = torch.tensor([[1.0, 2.0, 3.0]])
        >>> _extended(row, -1, "reflect").tolist(), _extended(row, -1, "zeros").tolist()
        ([[2.0, 1.0, 2.0, 3.0, 2.0]], [[0.0, 1.0, 2.0, 3.0, 0.0]])
    """
    if boundary == "zeros":
        edge = torch.zeros_like(features.narrow(dim, 0, 1))
        return torch.cat([edge, features, edge], dim)
    size = features.shape[dim]
    before = features.narrow(dim, min(1, size - 1), 1)
    after = features.narrow(dim, max(size - 2, 0), 1)
    return torch.cat([before, features, after], dim)


def tangent(features: Tensor, generator: str, stride: int = 1, boundary: Boundary = "reflect") -> Tensor:
    """d/dt of ``features`` (B, C, h, w) moved by the generator at t = 0: −v·∇, with the
    gradient by central differences on the frame extended beyond its edge by ``boundary``:
    ``reflect`` (the default), its mirror image about the border pixels' centres, as Gruver et
    al.'s warp samples it (lie-deriv, ``lee/transforms.py``: a bilinear ``grid_sample`` that
    reflects the indices, ``padding_mode="reflection"``, ``align_corners=True``), so that the
    difference across the edge is 0 at the border pixels; or ``zeros``, the zero fill of a warp
    that brings nothing in from outside. On a map whose cells are ``stride`` pixels apart,
    translations move it by 1/stride cells per pixel; the linear fields are the same in any unit.

    Central differences are the exact derivative at t = 0 of a Catmull-Rom (bicubic) warp, and
    the symmetric difference quotient of a bilinear one; the paper differentiates its bilinear
    warp with autograd at t = 0, which at the pixel centres is a one-sided difference, biased
    by half a pixel (and, at a border pixel, one side of the mirror's kink).

    Examples:
        >>> ramp = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 3, 5)  # brightness rising to the right
        >>> (tangent(ramp, "translation_x")[0, 0, 1] + 0).tolist()  # moving right darkens; not at the mirror
        [0.0, -1.0, -1.0, -1.0, 0.0]
        >>> tangent(ramp, "translation_x", boundary="zeros")[0, 0, 1].tolist()  # zeros beyond: the edges jump
        [-0.5, -1.0, -1.0, -1.0, 1.5]
    """
    (a, b), (c, d) = GENERATORS[generator][0]
    bx, by = GENERATORS[generator][1]
    height, width = features.shape[-2:]
    y = torch.arange(height, device=features.device, dtype=features.dtype)[:, None] - (height - 1) / 2
    x = torch.arange(width, device=features.device, dtype=features.dtype)[None, :] - (width - 1) / 2
    vx = a * x + b * y + bx / stride
    vy = c * x + d * y + by / stride
    across, down = _extended(features, -1, boundary), _extended(features, -2, boundary)
    dx = (across[..., 2:] - across[..., :-2]) / 2
    dy = (down[..., 2:, :] - down[..., :-2, :]) / 2
    return -(vx * dx + vy * dy)


# The step, in units of t (pixels, radians, log-scale), of the float64 central differences that
# stand in for forward-mode derivatives where torch has none: too small to cross a ReLU's or a
# max-pool's kink at almost every input, and far above float64 rounding (1e-16 / step).
FINITE_STEP = 1e-6


def _frame(images: Tensor, generator: str) -> Tensor:
    """The images as the generator is measured on: the rotation on the inscribed disk (as the
    rotation family's measurements), everything else on the grid."""
    return disk_mask(images) if generator == "rotation" else images


def lie_derivative(
    net: nn.Module, images: Tensor, generator: str, dense: bool = False, boundary: Boundary = "reflect"
) -> Tensor:
    """L_X f(x) = d/dt softmax f(g_t·x) at t = 0, (B, K) (or (B, K, H, W) for ``dense`` outputs,
    warped back: d/dt g_t⁻¹·softmax f(g_t·x)), by one forward-mode derivative (``torch.func.jvp``)
    along :func:`tangent`, the frame extended by ``boundary`` (the reference's mirror by
    default) for the image and the warped-back output alike. A network with an operation that
    torch cannot differentiate in forward mode (``grid_sample``, in group averaging over sampled
    rotations) gets the same directional derivative by central differences in float64, with a
    step of ``FINITE_STEP`` along the tangent."""
    images = _frame(images, generator)
    direction = tangent(images, generator, boundary=boundary)

    def probabilities(x: Tensor) -> Tensor:
        return net(x).softmax(dim=1)

    try:
        output, derivative = torch.func.jvp(probabilities, (images,), (direction,))
    except NotImplementedError:  # "Trying to use forward AD with <op> that does not support it"
        # In float64, on a copy: in float32 the rounding of the probabilities (1e-7 / step) and
        # the kinks of ReLU and max-pooling (crossed by a larger step) leave errors of 10%.
        twin = copy.deepcopy(net).double()
        x, v = images.double(), direction.double()
        forward, backward = (twin(x + sign * FINITE_STEP * v).softmax(dim=1) for sign in (1, -1))
        derivative = ((forward - backward) / (2 * FINITE_STEP)).to(images.dtype)
        output = probabilities(images)
    return derivative - tangent(output, generator, boundary=boundary) if dense else derivative


class LieDerivative(Measure):
    """Mean over images of the mean over classes (and, for segmentation, pixels) of |L_X f|,
    L_X f = d/dt softmax f(g_t·x) at t = 0 (Gruver et al. 2022), for each generator X:
    translation_x, translation_y (t in pixels), rotation (radians, about the centre, on the
    inscribed disk), scale (log-scale), shear (x += t·y) and stretch (x·eᵗ, y·e⁻ᵗ), t's
    unit per generator, with pixel coordinates about the image centre. 0 for a model invariant
    (for segmentation, equivariant: the output is warped back) to the transformation; a
    probability per unit of t.

    Computed exactly by one forward-mode derivative per generator (torch.func.jvp) along
    d/dt g_t·x = −v·∇x, the image's gradient by central differences on the image extended
    beyond the frame by its mirror image about the border pixels' centres, as the paper's code
    samples its warps (lie-deriv's ``grid_sample`` reflects, ``padding_mode="reflection"``): the
    derivative of a Catmull-Rom warp at t = 0, and the symmetric difference quotient of the
    paper's bilinear one (whose autograd takes a one-sided difference at the pixel centres).
    The mirror makes the difference across the edge 0 at the border pixels, where zeros
    beyond the frame (``tangent(..., boundary="zeros")``) would see a jump to black.
    """

    key = "lie"
    title = "Lie derivative"
    caption = "Lie derivative |L_X f| of the softmax output (probability per unit of t; 0 = invariant)"
    stages = ("test",)
    per_family = False
    scale, digits = 1.0, 4
    columns: ClassVar[dict[str, str]] = {name: f"lie/{name}" for name in GENERATORS}

    def update(self, batch: Batch, family: TransformFamily | None, record: Record, prefix: str) -> None:
        for generator in GENERATORS:
            derivative = end_to_end(batch, generator).abs()
            if batch.segmentation and generator == "rotation":  # on the disk, like the rotation family
                inside = frame_region(Rotation(), batch.images).to(derivative.dtype)
                per_image = (derivative * inside).sum(dim=(-2, -1)).mean(dim=1) / inside.sum()
            else:
                per_image = derivative.flatten(1).mean(dim=1)
            record.mean(f"{prefix}/lie/{generator}", per_image)


class LieLayerShares(Measure):
    """Each stage's share of the Lie derivative: the stage's own Lie derivative
    L_X Φ_k(h) = d/dt g_t⁻¹·Φ_k(g_t·h) pushed through the rest of the network, C_k (Gruver et
    al. 2022's layer-wise decomposition; the head's share is the pooling's own), so that
    Σ_k C_k = L_X f exactly (each map mirrored beyond its border, as the image is). Reported
    as the mean over images and classes of C_k·sign(L_X f), which add up to the end-to-end
    |L_X f| of ``lie``. Exact (one forward-mode derivative per stage), where the paper
    estimates each layer's squared norm with Hutchinson probes; those norms do not add up.
    """

    key = "lie_layers"
    needs = frozenset({"stages"})
    title = "Lie derivative per stage"
    tasks = ("classification",)
    stages = ("test",)
    per_family = False
    table = False
    default = False  # 1 + (stages) derivatives per generator: opt in with metrics.measures

    def update(self, batch: Batch, family: TransformFamily | None, record: Record, prefix: str) -> None:
        if batch.layered is None or not batch.layered.layer_strides():
            return
        for generator in GENERATORS:
            total = end_to_end(batch, generator)  # shared with ``lie`` when both run
            for name, share in layer_shares(batch.net, batch.images, generator, total).items():
                record.mean(f"{prefix}/lie/{generator}/layer/{name}", share)


def end_to_end(batch: Batch, generator: str) -> Tensor:
    """:func:`lie_derivative` of the batch, computed once for the measures that read it."""
    dense = batch.segmentation
    return batch.once(("lie", generator), lambda: lie_derivative(batch.net, batch.images, generator, dense))


def layer_contributions(
    net: nn.Module, images: Tensor, generator: str, total: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """L_X f (B, K) and each stage's contribution C_k (B, K), plus the head's, with
    Σ_k C_k = L_X f. E_k, the output's derivative when only stage k's map moves (E_0: the
    image, ``total`` when already computed), gives C_k = E_{k−1} − E_k and the head's E_last."""
    backbone = net.backbone
    strides = backbone.layer_strides()
    names = list(strides)
    moved = [lie_derivative(net, images, generator) if total is None else total]  # E_0: the image moves
    normalised = net.normalize(_frame(images, generator))
    for name in names:

        def output(amount: Tensor, name: str = name) -> Tensor:
            def edit(layer: str, features: Tensor) -> Tensor:
                if layer != name:
                    return features
                return features + amount * tangent(features, generator, strides[layer])

            features = backbone.layer_outputs(normalised, edit)[names[-1]]
            return net.head(features).softmax(dim=1)

        zero = torch.zeros((), device=images.device, dtype=images.dtype)
        moved.append(torch.func.jvp(output, (zero,), (torch.ones_like(zero),))[1])
    contributions = {name: moved[k] - moved[k + 1] for k, name in enumerate(names)}
    contributions["head"] = moved[-1]
    return moved[0], contributions


def layer_shares(
    net: nn.Module, images: Tensor, generator: str, total: Tensor | None = None
) -> dict[str, Tensor]:
    """Each stage's per-image share of ``generator``'s Lie derivative, mean_k C_k·sign(L_X f), (B,)."""
    total, contributions = layer_contributions(net, images, generator, total)
    sign = total.sign()
    return {layer: (c * sign).mean(dim=1) for layer, c in contributions.items()}
