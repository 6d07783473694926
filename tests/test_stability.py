"""Continuous and deformation symmetry: Lie derivatives, relative stability to diffeomorphisms,
jaggedness and mASSC, each checked on known answers and against its formula written out."""

from __future__ import annotations

import math

import pytest
import torch
from metrics_helpers import (
    BACKBONES,
    GlobalMean,
    SmoothCNN,
    bordered_images,
    cnn,
    measure,
    plain_net,
    random_split,
    shapes_split,
    warp,
)
from torch import Tensor, nn

from symtrain.backbones import Backbone, StandardCNN
from symtrain.data import Split
from symtrain.metrics import EquivarianceMetrics
from symtrain.metrics.base import Batch
from symtrain.metrics.lie import GENERATORS, layer_contributions, layer_shares, lie_derivative, tangent
from symtrain.module import Normalize, SegmentationNet, SymmetryNet
from symtrain.symmetry import Augmentation
from symtrain.transforms import CircularShift, Diffeo, Shift, disk_mask


def smooth_images(count: int = 3, size: int = 21) -> Tensor:
    """Gaussian blobs well inside the frame: derivatives of the warp are those of a smooth image."""
    generator = torch.Generator().manual_seed(1)
    y, x = torch.meshgrid(torch.arange(size.__float__()), torch.arange(size.__float__()), indexing="ij")
    images = []
    for _ in range(count):
        cy, cx = (size / 2 + (torch.rand(2, generator=generator) - 0.5) * 4).tolist()
        sigma = 2.0 + torch.rand(1, generator=generator).item()
        images.append(torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2)))
    return torch.stack(images)[:, None].double()


def small_net(classes: int = 5) -> SymmetryNet:
    torch.manual_seed(0)
    return SymmetryNet(Normalize([0.1], [0.25]), SmoothCNN(), classes).double().eval()


@pytest.mark.parametrize("generator", GENERATORS)
def test_lie_derivative_is_the_derivative_of_the_softmax_along_the_flow(generator: str) -> None:
    """d/dt softmax f(g_t·x) at 0, against a symmetric difference through an independent warp."""
    net, images = small_net(), smooth_images()
    framed = disk_mask(images) if generator == "rotation" else images
    with torch.no_grad():
        derivative = lie_derivative(net, images, generator)
        eps = 1e-6  # the bilinear warp's cross terms are O(eps · velocity), velocities up to 10 px
        probabilities = [net(warp(framed, generator, s * eps)).softmax(dim=1) for s in (1, -1)]
    difference = (probabilities[0] - probabilities[1]) / (2 * eps)
    assert derivative.abs().max() > 5e-5  # a CNN is not invariant to any of them
    assert torch.allclose(derivative, difference, rtol=1e-3, atol=1e-6), (derivative - difference).abs().max()


def test_without_forward_mode_the_lie_derivative_is_taken_by_central_differences(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A network with an operation torch cannot differentiate in forward mode (grid_sample in
    the sampled rotation average) gets the same derivative by float64 central differences."""
    from symtrain.symmetry import GroupAveraging
    from symtrain.transforms import Rotation

    net, images = small_net().float(), smooth_images().float()
    with torch.no_grad():
        exact = {generator: lie_derivative(net, images, generator) for generator in GENERATORS}

    def no_forward_mode(*args: object, **kwargs: object) -> None:
        raise NotImplementedError("Trying to use forward AD with grid_sampler_2d")

    monkeypatch.setattr(torch.func, "jvp", no_forward_mode)
    with torch.no_grad():
        for generator, derivative in exact.items():
            estimate = lie_derivative(net, images, generator)
            assert (estimate - derivative).norm() < 1e-4 * derivative.norm(), generator
    monkeypatch.undo()
    averaged = GroupAveraging([Rotation()], samples=2).wrap(net).eval()
    with torch.no_grad():  # through grid_sample, which has no forward-mode derivative
        assert lie_derivative(averaged, images, "rotation").isfinite().all()


def test_lie_derivative_units_and_known_answers() -> None:
    images = smooth_images()
    # translation by t pixels: the tangent of a horizontal ramp is minus its slope per pixel
    ramp = torch.arange(7.0).view(1, 1, 1, 7).expand(1, 1, 5, 7) * 0.5
    assert torch.allclose(tangent(ramp, "translation_x")[..., 1:-1, 1:-1], torch.tensor(-0.5))
    # on a map of stride 2 the same pixel shift is half a cell
    assert torch.allclose(tangent(ramp, "translation_x", 2)[..., 1:-1, 1:-1], torch.tensor(-0.25))
    # rotation in radians: a blob at radius r moves r pixels per radian, so the tangent's
    # magnitude is r times the slope; scale by log-factor: the same for a radial direction
    blob = smooth_images(1)
    rotation, scale = tangent(blob, "rotation"), tangent(blob, "scale")
    assert rotation.abs().max() > 0 and scale.abs().max() > 0
    # the mean intensity is invariant to translations of content inside the frame: 0 (and not
    # where content touches the border, which the zero fill cuts)
    mean_model = plain_net(GlobalMean()).double()
    inside = nn.functional.pad(images[..., 2:-2, 2:-2], [2] * 4)
    for generator in ("translation_x", "translation_y"):
        assert lie_derivative(mean_model, inside, generator).abs().max() < 1e-15
    # content that leaves on one side and not the other changes the mean
    ramp_images = images + torch.linspace(0, 0.5, 21, dtype=images.dtype)
    assert lie_derivative(mean_model, ramp_images, "translation_x").abs().max() > 1e-4
    # a constant model: 0 for every generator
    constant = nn.Sequential(nn.Flatten(), nn.Linear(21 * 21, 3)).double()
    nn.init.zeros_(constant[1].weight)
    for generator in GENERATORS:
        assert lie_derivative(constant, images, generator).abs().max() == 0


@pytest.mark.parametrize("images", [smooth_images(2, 16), bordered_images(2, 16)], ids=["inside", "bordered"])
def test_dense_lie_derivative_warps_the_output_back(images: Tensor) -> None:
    """For segmentation L f = d/dt g_t⁻¹·softmax f(g_t·x): against the symmetric difference,
    both warps mirroring the image at the border (content inside the frame, and reaching it)."""
    torch.manual_seed(0)
    net = SegmentationNet(Normalize([0.1], [0.25]), StandardCNN(1, width=4, depth=1), 3).double().eval()
    eps = 1e-6
    with torch.no_grad():
        derivative = lie_derivative(net, images, "translation_x", dense=True)
        moved = [
            warp(net(warp(images, "translation_x", s * eps)).softmax(1), "translation_x", -s * eps)
            for s in (1, -1)
        ]
    difference = (moved[0] - moved[1]) / (2 * eps)
    assert torch.allclose(derivative, difference, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("backbone", ["cnn", "blur", "c4"])
def test_layer_shares_add_up_to_the_end_to_end_lie_derivative(backbone: str) -> None:
    net = cnn(BACKBONES[backbone]())
    images = shapes_split(4, 17).images.float() / 255
    with torch.no_grad():
        for generator in ("translation_x", "rotation"):
            total, contributions = layer_contributions(net, images, generator)
            assert torch.equal(total, lie_derivative(net, images, generator))  # the end-to-end one
            # each stage's contribution pushed through the rest sums to the whole derivative
            assert torch.allclose(sum(contributions.values()), total, atol=1e-7)
            assert set(contributions) == {*net.backbone.layer_strides(), "head"}
            shares = layer_shares(net, images, generator)
            assert torch.allclose(sum(shares.values()), total.abs().mean(dim=1), atol=1e-7)
            # and each contribution is the stage's own Lie derivative, not the total again
            assert max(c.abs().max() for c in contributions.values()) < total.abs().max() * 10


def test_lie_measures_through_the_callback() -> None:
    """The end-to-end values by default (test only), the layer shares on request, adding up."""
    split = shapes_split(8, 17)
    callback = EquivarianceMetrics([Shift(2)], measures=["lie", "lie_layers"], angle_step=0)
    values = measure(cnn(StandardCNN(1, width=4, depth=2)), split, callback)
    for generator in GENERATORS:
        layers = [v for k, v in values.items() if k.startswith(f"test/lie/{generator}/layer/")]
        assert len(layers) == 3  # two stages and the head
        assert values[f"test/lie/{generator}"] > 0
        assert math.isclose(sum(layers), values[f"test/lie/{generator}"], rel_tol=1e-5)
    default = [m.key for m in EquivarianceMetrics().chosen("classification")]
    assert "lie" in default and "diffeo" in default and "lie_layers" not in default


# -- relative stability to diffeomorphisms ------------------------------------------------------


def test_diffeo_family_follows_the_paper() -> None:
    family = Diffeo(delta=1.0, cut=3)
    elements = family.sample(4000, torch.Generator().manual_seed(0))
    for size in (28, 33):
        field = family.displacement(elements, size, size)
        # the field at p, written out: √T·n·Σ c_ij/√(i²+j²) sin(πix) sin(πjy), T = 4δ²/(π n² ln c)
        temperature = 4 / (math.pi * size**2 * math.log(3))
        u = torch.linspace(0, 1, size)
        coefficients = elements[0].view(2, 3, 3)
        y, x = 5, 11
        expected = 0.0
        for i in range(1, 4):
            for j in range(1, 4):
                if math.hypot(i, j) < 3.5:
                    c = coefficients[0, i - 1, j - 1] / math.hypot(i, j)
                    expected += c * math.sin(math.pi * i * u[x]) * math.sin(math.pi * j * u[y])
        assert math.isclose(field[0, 0, y, x].item(), math.sqrt(temperature) * size * expected, rel_tol=1e-4)
        rms = field.pow(2).sum(dim=1).mean().sqrt().item()
        assert 0.75 < rms < 0.9, rms  # the paper's estimate of δ = 1, 0.82 by the exact sum
        assert field[..., 0, :].abs().max() == 0 and field[..., :, -1].abs().max() < 1e-5  # the border stays
    doubled = Diffeo(delta=2.0).displacement(elements[:8], 28, 28)
    assert torch.allclose(doubled, 2 * family.displacement(elements[:8], 28, 28))
    images = torch.rand(3, 1, 28, 28)
    assert torch.equal(family.apply(images, torch.zeros(3, 18)), images)


def test_diffeo_augmentation_is_apply_with_the_elements_it_drew() -> None:
    family = Diffeo(delta=1.5)
    pipeline = Augmentation([family]).pipeline((29, 29))
    images = torch.rand(4, 1, 29, 29)
    out = pipeline(images)
    drawn = pipeline._params[0].data["elements"]
    assert torch.allclose(out, family.apply(images, drawn), atol=1e-6)
    assert (out - images).abs().mean() > 0.01


def test_identity_map_gives_r_f_mean_one_and_an_invariant_map_zero() -> None:
    split = random_split(count=8, size=15)
    callback = EquivarianceMetrics([Shift(2)], measures=["diffeo"], draws=3)
    values = measure(Identity(), split, callback)
    # the paper's written ratio of means: ‖η‖ = ‖τx − x‖ per image (the reference code's
    # medians keep no such exact value)
    assert math.isclose(values["test/diffeo/R_f_mean"], 1.0, rel_tol=1e-6)
    assert values["test/diffeo/R_f"] > 0
    assert values["test/diffeo/D_f"] > 0
    # the border pixels never move under these diffeomorphisms; noise moves them
    values = measure(BorderPixel(), split, callback)
    assert values["test/diffeo/R_f"] == 0 and values["test/diffeo/D_f"] == 0
    assert values["test/diffeo/G_f"] > 0


def test_r_f_against_the_formula_written_out() -> None:
    """diffeo-sota's relative_distance: per output the median over images (and draws) of the
    squared change, summed, over the median squared distance between two images' outputs."""
    split = shapes_split(6, 17)
    net = cnn(StandardCNN(1, width=4, depth=2))
    callback = EquivarianceMetrics([Shift(2)], measures=["diffeo"], draws=2, diffeo_delta=1.5, diffeo_cut=4)
    values = measure(net, split, callback)
    images = callback._subsets[("test", id(split))].images.float() / 255
    batch = Batch(net, images, torch.zeros(6), False, 8, torch.arange(6), 6, 0)
    family = Diffeo(1.5, 4)
    with torch.no_grad():
        f0 = net(images).double()
        deformed_sq, noisy_sq = [], []
        for draw in range(2):
            deformed = family.apply(images, batch.sample(family, draw))
            eta = batch.normal(draw)
            eta = (
                eta
                / eta.flatten(1).norm(dim=1)[:, None, None, None]
                * (deformed - images).flatten(1).norm(dim=1)[:, None, None, None]
            )
            deformed_sq.append((net(deformed).double() - f0).pow(2))
            noisy_sq.append((net(images + eta).double() - f0).pow(2))
    pairs = torch.stack([(f0[i] - f0[j]).pow(2).sum() for i in range(6) for j in range(6)]).median()
    d_f = torch.cat(deformed_sq).median(0).values.sum() / pairs
    g_f = torch.cat(noisy_sq).median(0).values.sum() / pairs
    assert math.isclose(values["test/diffeo/D_f"], d_f.item(), rel_tol=1e-5)
    assert math.isclose(values["test/diffeo/G_f"], g_f.item(), rel_tol=1e-5)
    assert math.isclose(values["test/diffeo/R_f"], (d_f / g_f).item(), rel_tol=1e-5)
    mean_ratio = torch.cat(deformed_sq).sum() / torch.cat(noisy_sq).sum()
    assert math.isclose(values["test/diffeo/R_f_mean"], mean_ratio.item(), rel_tol=1e-5)
    assert {f"test/diffeo/R_f/layer/stage{i}" for i in (1, 2)} <= set(values)


class Identity(nn.Module):
    def forward(self, images: Tensor) -> Tensor:
        return images.flatten(1)


class BorderPixel(nn.Module):
    """The top-left pixel and the bottom-right one: fixed by every diffeomorphism of the family."""

    def forward(self, images: Tensor) -> Tensor:
        return torch.stack([images[:, 0, 0, 0], images[:, 0, -1, -1]], dim=1)


# -- jaggedness and mASSC -----------------------------------------------------------------------


class Parity(Backbone):
    """Predicts the parity of the brightest pixel's column (or row): flips at every step that
    moves it by one column (row)."""

    out_channels = 2

    def __init__(self, axis: str = "column") -> None:
        super().__init__()
        self.axis = axis

    def forward(self, images: Tensor) -> Tensor:
        brightest = images.flatten(2).argmax(dim=2)[:, 0]
        position = brightest % images.shape[-1] if self.axis == "column" else brightest // images.shape[-1]
        odd = (position % 2).float()
        return torch.stack([1 - odd, odd], dim=1)[..., None, None]


def test_jaggedness_counts_one_pixel_steps_that_change_the_class() -> None:
    split = random_split(count=8, size=12)
    callback = EquivarianceMetrics([Shift(2)], measures=["jaggedness"], max_shift=4)
    # the parity of the column flips at every step of both paths (each moves one column); the
    # row's only along the diagonal, half of all steps
    assert measure(plain_net(Parity("column")), split, callback)["test/equiv/shift/jaggedness"] == 1.0
    assert measure(plain_net(Parity("row")), split, callback)["test/equiv/shift/jaggedness"] == 0.5
    assert measure(plain_net(GlobalMean()), split, callback)["test/equiv/shift/jaggedness"] == 0.0


def test_diagonal_shift_curve_beside_the_horizontal_one() -> None:
    callback = EquivarianceMetrics([Shift(2)], measures=["curve"], angle_step=0, max_shift=3)
    measure(plain_net(GlobalMean()), shapes_split(8, 15), callback)
    assert callback.curves["test/shift_diagonal"]["pixels"] == [0.0, 1.0, 2.0, 3.0]
    assert len(callback.curves["test/shift"]["acc"]) == 4


class PerPixel(nn.Module):
    """A 1x1 convolution: exactly equivariant to every integer shift; with ``position``, a
    random logit per position is added, which stays where it is when the image moves."""

    def __init__(self, position: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 1)
        self.position = position

    def forward(self, images: Tensor) -> Tensor:
        logits = self.conv(images)
        if self.position:
            generator = torch.Generator().manual_seed(1)
            logits = logits + 10 * torch.randn(logits.shape[1:], generator=generator)
        return logits


def segmentation_split(count: int = 8, size: int = 16) -> Split:
    split = random_split(count, size)
    return Split(split.images, split.labels, (split.images[:, 0] > 128).long())


@pytest.mark.parametrize("family", [Shift(3), CircularShift(3)], ids=repr)
def test_massc_is_full_for_an_equivariant_map_and_not_for_a_strided_one(family) -> None:
    split = segmentation_split()
    callback = EquivarianceMetrics([family], measures=["massc"], draws=3)
    values = measure(PerPixel().eval(), split, callback, segmentation=True, num_outputs=3)
    assert values[f"test/equiv/{family.name}/massc"] == 1.0
    values = measure(PerPixel(position=True).eval(), split, callback, segmentation=True, num_outputs=3)
    assert 0.2 < values[f"test/equiv/{family.name}/massc"] < 0.9
