"""Every transformation family honours the contract; the exact ones really are exact."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from symtrain.errors import SymtrainError
from symtrain.symmetry import Augmentation
from symtrain.transforms import (
    Affine,
    CircularShift,
    Flip,
    Rot90,
    Rotation,
    Shift,
)


def test_random_elements_of_an_exact_family_are_uniform() -> None:
    """With p = 1 a flip family flips about half of the images, and quarter turns come out
    equally often (a flip applied with probability 1 would mirror every image)."""
    torch.manual_seed(0)
    images = torch.rand(4000, 1, 3, 3)
    flipped = Augmentation([Flip()]).augment(images)
    share = (flipped != images).flatten(1).any(dim=1).float().mean()
    assert 0.45 < share < 0.55
    turns = Augmentation([Rot90()]).pipeline((3, 3))
    turns(images)
    counts = turns._params[0].data["elements"][:, 0].long().bincount(minlength=4)
    assert counts.min() > 900 and counts.max() < 1100, counts


def test_circular_shift_has_no_kornia_augmentation() -> None:
    with pytest.raises(SymtrainError, match="use Shift|augment with Shift"):
        CircularShift().augmentation(p=1.0, image_size=(16, 16))


def test_rot90_matches_torch_rot90(images: torch.Tensor) -> None:
    elements = torch.tensor([[0.0], [1.0], [2.0], [3.0], [1.0], [2.0]])
    out = Rot90().apply(images, elements)
    for i, k in enumerate(elements[:, 0].long().tolist()):
        assert torch.equal(out[i], torch.rot90(images[i], k, dims=(-2, -1)))


def test_rot90_is_a_group_action(images: torch.Tensor) -> None:
    one = torch.ones(len(images), 1)
    out = images
    for _ in range(4):
        out = Rot90().apply(out, one)
    assert torch.equal(out, images)


def test_kornia_rot90_augmentation_is_exact(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    out = Rot90().augmentation(p=1.0, image_size=(16, 16))(images)
    for i in range(len(images)):
        assert any(
            torch.allclose(out[i], torch.rot90(images[i], k, dims=(-2, -1)), atol=1e-5) for k in range(4)
        )


def test_flip_is_an_involution(images: torch.Tensor) -> None:
    ones = torch.ones(len(images), 1)
    assert torch.equal(Flip().apply(Flip().apply(images, ones), ones), images)
    assert torch.equal(Flip().apply(images, ones), images.flip(-1))


def test_circular_shift_is_a_permutation(images: torch.Tensor) -> None:
    elements = CircularShift(5).sample(len(images), torch.Generator().manual_seed(0))
    out = CircularShift(5).apply(images, elements)
    assert torch.equal(out.flatten(1).sort(dim=1).values, images.flatten(1).sort(dim=1).values)
    assert torch.equal(CircularShift().apply(out, -elements), images)


def test_shift_moves_content_and_fills_zeros() -> None:
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 2, 3] = 1.0
    out = Shift(4).apply(image, torch.tensor([[1.0, 2.0]]))  # one down, two right
    assert out[0, 0, 3, 5] == 1.0 and out.sum() == 1.0


def test_rotation_by_90_degrees_matches_rot90() -> None:
    image = torch.rand(1, 1, 9, 9)
    out = Rotation().apply(image, torch.tensor([[90.0]]))
    assert torch.allclose(out, torch.rot90(image, 1, dims=(-2, -1)), atol=1e-4)


def test_affine_identity_element_is_identity(images: torch.Tensor) -> None:
    identity = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]]).repeat(len(images), 1)
    assert torch.allclose(Affine().apply(images, identity), images, atol=1e-5)


def test_affine_pure_rotation_matches_rotation() -> None:
    image = torch.rand(1, 1, 9, 9)
    element = torch.tensor([[90.0, 0.0, 0.0, 1.0, 0.0]])
    assert torch.allclose(Affine().apply(image, element), torch.rot90(image, 1, dims=(-2, -1)), atol=1e-4)


@settings(max_examples=200)
@given(degrees=st.floats(min_value=1.0, max_value=180.0))
def test_rotation_test_elements_stay_clear_of_c16_and_the_identity_for_every_range(degrees: float) -> None:
    """For any range ±d: four elements in range, each at least min(10, d / 2) degrees from every
    multiple of 22.5 (C4, C8 and C16's elements, the identity among them), and for the full
    circle the golden-ratio spread itself."""
    angles = Rotation(degrees).test_elements()[:, 0].double()
    assert angles.shape == (4,) and (angles.abs() <= degrees + 1e-4).all()
    offset = torch.remainder(angles, 22.5)
    assert (torch.minimum(offset, 22.5 - offset) >= min(10.0, degrees / 2) - 1e-4).all(), angles


def test_full_circle_rotation_test_elements_are_the_golden_spread() -> None:
    golden = (5**0.5 - 1) / 2
    expected = torch.tensor([-180 + (k + golden) * 90 for k in range(4)])
    assert torch.allclose(Rotation().test_elements()[:, 0], expected)
