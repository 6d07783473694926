"""The escnn Wide ResNet: which symmetries survive which restriction schedule, measured;
parameter matching with the plain WRN; export to plain torch; one-line refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from symtrain.backbones import EquivariantWideResNet
from symtrain.errors import SymtrainError
from symtrain.transforms import Flip, Rot90

ACTIONS = {
    Rot90(): lambda x: torch.rot90(x, 1, dims=(-2, -1)),
    Flip("horizontal"): lambda x: x.flip(-1),
    Flip("vertical"): lambda x: x.flip(-2),
}
TINY = {"depth": 10, "widen": 1}


@pytest.mark.parametrize(
    "group,order,restrict,survivors",
    [
        ("D", 4, None, {Rot90(), Flip("horizontal"), Flip("vertical")}),
        ("D", 8, [4, 4], {Rot90(), Flip("horizontal"), Flip("vertical")}),  # D8D4D4
        ("D", 8, [4, 1], {Flip("horizontal")}),  # D8D4D1: the reflection of the group's axis
        ("C", 8, [4, 1], set()),  # C8C4C1: nothing by the last stage
        ("C", 4, None, {Rot90()}),
        ("C", 1, None, set()),  # the plain WRN
    ],
)
def test_what_survives_each_restriction_schedule(group: str, order: int, restrict, survivors: set) -> None:
    """A symmetry is exact iff every stage's group holds it, at a side where the strided
    convolutions sample symmetric grids (29 = 4 * 7 + 1); what the model declares is that."""
    torch.manual_seed(0)
    net = EquivariantWideResNet(1, **TINY, group=group, order=order, restrict=restrict).eval()
    declared = {family for family, how in net.declared_symmetries().items() if how == "exact"}
    assert declared == survivors
    images = torch.rand(3, 1, 29, 29, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled = net(images).mean((-2, -1))
        for family, act in ACTIONS.items():
            change = ((net(act(images)).mean((-2, -1)) - pooled).norm() / pooled.norm()).item()
            assert (change < 1e-5) == (family in survivors), (family, change)


def test_even_sides_break_the_claim_and_the_size_check_says_so() -> None:
    torch.manual_seed(0)
    net = EquivariantWideResNet(1, **TINY, group="C", order=4).eval()
    assert net.input_size_problem(29) is None and net.input_size_problem(33) is None
    assert "1 more than a multiple of its total stride 4" in net.input_size_problem(28)
    assert "--data.image_size 25" in net.input_size_problem(28)
    images = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        pooled = net(images).mean((-2, -1))
        rotated = net(torch.rot90(images, 1, dims=(-2, -1))).mean((-2, -1))
    assert ((rotated - pooled).norm() / pooled.norm()).item() > 1e-4


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("group,order,restrict", [("D", 8, [4, 1]), ("C", 8, [4, 1]), ("D", 4, None)])
def test_fixparams_matches_the_plain_wrn(group: str, order: int, restrict) -> None:
    """Weiler & Cesa's fixparams: channels / sqrt(|G|) regular fields keep the parameter count
    near the plain WRN's of the same depth and widen factor (the 5x5 filters of groups with
    more than 4 rotations cost a little more); without it, about |G| times fewer channels' worth."""
    plain = parameters(EquivariantWideResNet(3, depth=16, widen=2, group="C", order=1))
    matched = parameters(
        EquivariantWideResNet(3, depth=16, widen=2, group=group, order=order, restrict=restrict)
    )
    assert 0.9 < matched / plain < 1.25  # 1.18 for D8D4D1 (WRN-16-8: 11.9M against 10.0M)
    unmatched = EquivariantWideResNet(
        3, depth=16, widen=2, group=group, order=order, restrict=restrict, fixparams=False
    )
    assert parameters(unmatched) < 0.7 * matched


def test_export_is_plain_torch_with_the_same_outputs() -> None:
    torch.manual_seed(0)
    net = EquivariantWideResNet(1, **TINY, group="D", order=8, restrict=[4, 1], dropout=0.3)
    net.train()(torch.rand(4, 1, 29, 29))  # batch statistics move away from their initial values
    exported = net.export()
    assert all(not type(m).__module__.startswith("escnn") for m in exported.modules())
    images = torch.rand(2, 1, 33, 33)
    with torch.no_grad():
        assert torch.allclose(exported(images), net.eval()(images), atol=1e-5)
    assert net.feature_info()[-1].channels == net.out_channels


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"depth": 12}, r"depth 12 is not 6n \+ 4"),
        ({"group": "D", "order": 8, "restrict": [3, 1]}, "each dividing the one before"),
        ({"group": "D", "order": 8, "restrict": [4]}, "give the rotations of stages 2 and 3"),
        ({"group": "SO2"}, "use C or D"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(SymtrainError, match=message) as error:
        EquivariantWideResNet(1, **{**TINY, **kwargs})
    assert len(str(error.value).splitlines()) == 1


def test_the_kernel_basis_is_the_papers() -> None:
    """Weiler & Cesa's e2wrn basis: Gaussian rings of radial width 0.45 at every radius, the
    centre's included (escnn's default is 0.005 there, a single pixel), and frequencies up to
    pi per pixel of radius. The centre ring's filter, sampled on the 3x3 grid, is
    exp(-d^2 / (2 * 0.45^2)) at distance d from the centre."""
    from escnn import gspaces
    from escnn import nn as enn

    from symtrain.backbones.equivariant.layers import wide_conv

    trivial = gspaces.rot2dOnR2(1)
    scalar = enn.FieldType(trivial, [trivial.trivial_repr])
    basis = wide_conv(scalar, scalar, 3).basisexpansion
    assert basis.dimension() == 8  # of a 3x3 kernel's 9
    centre = [index for index, attr in enumerate(basis.get_basis_info()) if attr["radius"] == 0]
    weights = torch.zeros(basis.dimension())
    weights[centre] = 1.0
    kernel = basis(weights).reshape(3, 3).double()
    distance = torch.tensor([[2.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 2.0]], dtype=torch.float64)
    expected = torch.exp(-distance / (2 * 0.45**2))  # distance holds d^2
    assert torch.allclose(kernel / kernel[1, 1], expected, atol=1e-6)
