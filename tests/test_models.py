"""Backbones honour their contract; strategies check and augment; the module composes them."""

from functools import partial

import pytest
import torch

from symtrain.backbones import StandardCNN
from symtrain.errors import SymtrainError
from symtrain.module import SymmetryModule
from symtrain.symmetry import Architectural, Augmentation, NoSymmetry
from symtrain.transforms import CircularShift, Flip, Rot90, Rotation, Shift

# A tiny StandardCNN (every backbone's contract is in test_contracts.py).
TINY_CNN = partial(StandardCNN, width=4, depth=2)


def test_standard_cnn_is_not_rot90_invariant() -> None:
    torch.manual_seed(0)
    module = SymmetryModule(TINY_CNN, num_classes=5).eval()
    x = torch.rand(4, 1, 32, 32)
    assert not torch.allclose(module(x), module(torch.rot90(x, 1, dims=(-2, -1))), atol=1e-3)


def test_architectural_refuses_a_backbone_without_the_group() -> None:
    with pytest.raises(SymtrainError, match="StandardCNN does not declare exact rot90"):
        SymmetryModule(TINY_CNN, symmetry=Architectural([Rot90()]))


def test_architectural_accepts_declared_approximate_symmetry_when_asked() -> None:
    strategy = Architectural([Shift()], require_exact=False)
    module = SymmetryModule(TINY_CNN, symmetry=strategy)
    x = torch.rand(3, 1, 16, 16)
    assert torch.equal(module.symmetry.augment(x), x)  # architectural never augments


def test_architectural_and_augmentation_need_families() -> None:
    with pytest.raises(SymtrainError, match="at least one family"):
        Architectural([])
    with pytest.raises(SymtrainError, match="at least one family"):
        Augmentation([])


def test_augmentation_refuses_what_kornia_cannot_sample() -> None:
    with pytest.raises(SymtrainError, match="circular_shift"):
        Augmentation([CircularShift()])


def test_augmentation_refuses_a_bad_probability() -> None:
    with pytest.raises(SymtrainError, match="probability"):
        Augmentation([Rotation()], p=1.5)


def test_augmentation_p1_always_draws_an_element_and_p0_never() -> None:
    """p = 1: every image gets a random element of the family, which for flips is the mirror
    or the identity (half each); p = 0: nothing changes."""
    x = torch.rand(64, 1, 8, 8)
    torch.manual_seed(0)
    pipeline = Augmentation([Flip()], p=1.0).pipeline((8, 8))
    out = pipeline(x)
    mirrored = pipeline._params[0].data["elements"][:, 0].bool()
    assert torch.equal(out[mirrored], x[mirrored].flip(-1)) and torch.equal(out[~mirrored], x[~mirrored])
    assert 16 < mirrored.sum() < 48
    assert torch.equal(Augmentation([Flip()], p=0.0).augment(x), x)


def test_augmentation_keeps_batch_on_its_dtype_and_size() -> None:
    x = torch.rand(5, 3, 20, 20)
    out = Augmentation([Rotation(), Shift(2)]).augment(x)
    assert out.shape == x.shape and out.dtype == x.dtype


def test_module_normalises_inside_the_model() -> None:
    module = SymmetryModule(TINY_CNN, num_classes=3, mean=(0.25,), std=(0.5,))
    x = torch.full((1, 1, 8, 8), 0.25)
    assert torch.allclose(module.net.normalize(x), torch.zeros_like(x))


def test_module_default_strategy_is_no_symmetry() -> None:
    assert isinstance(SymmetryModule(TINY_CNN).symmetry, NoSymmetry)
