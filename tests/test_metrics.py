"""Equivariance metrics, validated on cases whose answers are known."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from symtrain.backbones import AntialiasedCNN, Backbone, EquivariantCNN, StandardCNN
from symtrain.data import Split, SyntheticShapes
from symtrain.metrics import EquivarianceMetrics, radial_profile, relative_error
from symtrain.module import Normalize, SymmetryNet
from symtrain.transforms import CircularShift, Flip, Rot90, Rotation, Shift


class LeftRight(Backbone):
    """Two channels: the mean of the left half and of the right half (a known flip response)."""

    out_channels = 2

    def forward(self, images: Tensor) -> Tensor:
        width = images.shape[-1]
        left, right = images[..., : width // 2].mean((1, 2, 3)), images[..., width // 2 :].mean((1, 2, 3))
        return torch.stack([left, right], dim=1)[..., None, None]  # (B, 2, 1, 1)


class GlobalMean(Backbone):
    """The mean intensity: invariant to every exact family."""

    out_channels = 1

    def forward(self, images: Tensor) -> Tensor:
        return images.mean((1, 2, 3))[:, None, None, None]


class Identity(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


def plain_net(backbone: Backbone) -> SymmetryNet:
    net = SymmetryNet(Normalize([0.0], [1.0]), backbone, num_classes=2)
    net.head = Identity()  # logits are the pooled features themselves: responses stay readable
    net.head.forward = lambda features: features.mean((-2, -1))
    return net.eval()


def measure(
    net: nn.Module, split: Split, callback: EquivarianceMetrics, with_curves: bool = False, **module: object
) -> dict[str, float]:
    """Run the callback's measurement on one split, with just enough of a trainer and a module
    (``module`` adds attributes, e.g. ``segmentation=True``)."""
    trainer = SimpleNamespace(global_rank=0, world_size=1, datamodule=SimpleNamespace(splits={"test": split}))
    logged: dict[str, float] = {}
    module = SimpleNamespace(
        net=net,
        device=torch.device("cpu"),
        training=False,
        eval=lambda: None,
        train=lambda mode: None,
        log=lambda name, value, **kwargs: logged.setdefault(name, value),
        **module,
    )
    values = callback.measure(trainer, module, "test", with_curves=with_curves)
    assert {k: v for k, v in values.items() if "/curve/" not in k} == logged
    return values


def random_split(count: int = 32, size: int = 16, seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    images = (torch.rand(count, 1, size, size, generator=generator) * 255).to(torch.uint8)
    return Split(images, torch.randint(0, 2, (count,), generator=generator))


def shapes_split(count: int = 64, size: int = 32) -> Split:
    data = SyntheticShapes(num_train=1, num_val=1, num_test=count, image_size=size)
    data.setup()
    return data.splits["test"]


def test_relative_error_and_radial_profile_basics() -> None:
    x = torch.rand(3, 5)
    assert torch.equal(relative_error(x, x), torch.zeros(3))
    assert relative_error(2 * x, x).allclose(torch.ones(3))
    images = torch.rand(2, 1, 17, 17)
    assert torch.allclose(radial_profile(images), radial_profile(images.flip(-1)))


def test_an_invariant_function_has_zero_error_and_full_consistency() -> None:
    families = [Rot90(), Flip(), CircularShift(4)]
    values = measure(
        plain_net(GlobalMean()), random_split(), EquivarianceMetrics(families, layerwise=False, angle_step=0)
    )
    for family in ("rot90", "flip", "circular_shift"):
        assert values[f"test/equiv/{family}/invariance_error"] == pytest.approx(0.0, abs=1e-6)
        assert values[f"test/equiv/{family}/consistency"] == 1.0


def test_a_known_response_gives_the_known_value() -> None:
    """Flipping swaps the two half-means (a, b) -> (b, a): error sqrt(2)|a - b| / sqrt(a^2 + b^2)."""
    split = random_split()
    images = split.images.float() / 255
    half = images.shape[-1] // 2
    a, b = images[..., :half].mean((1, 2, 3)), images[..., half:].mean((1, 2, 3))
    expected = (math.sqrt(2) * (a - b).abs() / torch.sqrt(a**2 + b**2)).mean().item()
    swapped_agree = ((a > b) == (b > a)).float().mean().item()  # argmax changes iff a != b
    values = measure(
        plain_net(LeftRight()), split, EquivarianceMetrics([Flip()], layerwise=False, angle_step=0)
    )
    assert values["test/equiv/flip/invariance_error"] == pytest.approx(expected, rel=1e-5)
    assert values["test/equiv/flip/consistency"] == pytest.approx(swapped_agree)


def test_c4_model_is_rot90_invariant_and_a_plain_cnn_is_not() -> None:
    torch.manual_seed(0)
    split = shapes_split()
    callback = EquivarianceMetrics([Rot90()], layerwise=False, angle_step=0, max_shift=0)
    c4 = SymmetryNet(Normalize([0.1], [0.25]), EquivariantCNN(1, "C", 4, width=8, depth=2), 8).eval()
    cnn = SymmetryNet(Normalize([0.1], [0.25]), StandardCNN(1, width=8, depth=2), 8).eval()
    c4_values, cnn_values = measure(c4, split, callback), measure(cnn, split, callback)
    assert c4_values["test/equiv/rot90/invariance_error"] < 1e-5
    assert c4_values["test/equiv/rot90/consistency"] == 1.0
    assert cnn_values["test/equiv/rot90/invariance_error"] > 1e-3


@pytest.mark.parametrize("group,order", [("C", 4), ("D", 4), ("SO2", 0), ("O2", 0)])
def test_escnn_layerwise_profile_is_zero_for_its_group(group: str, order: int) -> None:
    torch.manual_seed(0)
    backbone = EquivariantCNN(1, group, order, width=8, depth=2)
    net = SymmetryNet(Normalize([0.1], [0.25]), backbone, 8).eval()
    families = [Rot90(), Flip()] if group in ("D", "O2") else [Rot90()]
    values = measure(net, shapes_split(16, 29), EquivarianceMetrics(families, angle_step=0, max_shift=0))
    layers = {k: v for k, v in values.items() if "/layer/" in k}
    assert len(layers) == len(families) * 3  # stage1, stage2, invariant
    assert max(layers.values()) < 1e-5, layers


def test_plain_cnn_layerwise_profile_is_not_zero_under_rot90() -> None:
    torch.manual_seed(0)
    net = SymmetryNet(Normalize([0.1], [0.25]), StandardCNN(1, width=8, depth=2), 8).eval()
    values = measure(net, shapes_split(16), EquivarianceMetrics([Rot90()], angle_step=0, max_shift=0))
    assert min(v for k, v in values.items() if "/layer/" in k) > 1e-2


def test_aps_model_is_exactly_consistent_under_circular_shifts() -> None:
    torch.manual_seed(0)
    net = SymmetryNet(
        Normalize([0.1], [0.25]), AntialiasedCNN(1, width=8, depth=2, downsample="aps"), 8
    ).eval()
    values = measure(net, shapes_split(), EquivarianceMetrics([CircularShift(8)], angle_step=0, max_shift=0))
    assert values["test/equiv/circular_shift/consistency"] == 1.0
    assert values["test/equiv/circular_shift/invariance_error"] < 1e-5
    # and each stage's map moves exactly with shifts by multiples of its stride
    assert max(v for k, v in values.items() if "/layer/" in k) < 1e-5


def test_blur_model_has_lower_shift_error_than_max_model() -> None:
    torch.manual_seed(0)
    max_backbone = AntialiasedCNN(1, width=8, depth=3, downsample="max")
    blur_backbone = AntialiasedCNN(1, width=8, depth=3, downsample="blur")
    blur_backbone.load_state_dict(max_backbone.state_dict())  # the same weights, only the pooling differs
    split = shapes_split(128)
    callback = EquivarianceMetrics([CircularShift(3)], layerwise=False, angle_step=0, max_shift=0)
    errors = {}
    for name, backbone in (("max", max_backbone), ("blur", blur_backbone)):
        net = SymmetryNet(Normalize([0.1], [0.25]), backbone, 8).eval()
        errors[name] = measure(net, split, callback)["test/equiv/circular_shift/invariance_error"]
    assert errors["blur"] < 0.7 * errors["max"], errors


def test_interpolated_rotation_reports_a_floor_and_curves() -> None:
    torch.manual_seed(0)
    net = SymmetryNet(Normalize([0.1], [0.25]), StandardCNN(1, width=8, depth=2), 8).eval()
    callback = EquivarianceMetrics([Rotation(), Shift(2)], layerwise=False, angle_step=90.0, max_shift=2)
    values = measure(net, shapes_split(16), callback, with_curves=True)
    assert 0 < values["test/equiv/rotation/error_floor"] < 0.1  # interpolation costs a little, not nothing
    assert "test/equiv/shift/error_floor" not in values  # no invariant reference for zero-fill shifts
    assert callback.curves["test/rotation"]["angle"] == [0.0, 90.0, 180.0, 270.0]
    assert callback.curves["test/shift"]["pixels"] == [0.0, 1.0, 2.0]
    assert all(0.0 <= acc <= 1.0 for acc in callback.curves["test/rotation"]["acc"])
