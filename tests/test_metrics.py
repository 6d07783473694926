"""Equivariance metrics, validated on cases whose answers are known. Against their papers' code
(R_f and the Lie derivative): ``test_metrics_reference.py``."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from metrics_helpers import (
    BACKBONES,
    GlobalMean,
    cnn,
    measure,
    plain_net,
    random_split,
    shapes_split,
)
from torch import Tensor, nn

from symtrain.backbones import AntialiasedCNN, Backbone, EquivariantCNN, StandardCNN
from symtrain.data import Split
from symtrain.errors import SymtrainError
from symtrain.metrics import EquivarianceMetrics, Measure
from symtrain.metrics.functional import SpreadRelativeError, centred, visible_region
from symtrain.metrics.subset import stratified_subset
from symtrain.module import Normalize, SymmetryNet
from symtrain.transforms import (
    Affine,
    CircularShift,
    Diffeo,
    Elastic,
    Flip,
    Rot90,
    Rotation,
    Shift,
    TransformFamily,
    disk_mask,
)


class LeftRight(Backbone):
    """Two channels: the mean of the left half and of the right half (a known flip response)."""

    out_channels = 2

    def forward(self, images: Tensor) -> Tensor:
        width = images.shape[-1]
        left, right = images[..., : width // 2].mean((1, 2, 3)), images[..., width // 2 :].mean((1, 2, 3))
        return torch.stack([left, right], dim=1)[..., None, None]  # (B, 2, 1, 1)


def spread_error(moved: list[Tensor], reference: Tensor) -> float:
    """The formula, written out: mean over images and elements of the squared distance of the
    centred logits, over the mean squared distance between two different images' centred logits."""
    a = centred(reference.double())
    pairs = [(a[i] - a[j]).pow(2).sum() for i in range(len(a)) for j in range(len(a)) if i != j]
    numerator = torch.stack([(centred(m.double()) - a).pow(2).sum(1) for m in moved]).mean()
    return (numerator / torch.stack(pairs).mean()).item()


class AtIdentity(TransformFamily):
    """A family whose test and random elements are all the identity: every measure's known answer."""

    def __init__(self, family: TransformFamily) -> None:
        self.family = family
        self.name, self.exact, self.frame = family.name, family.exact, family.frame

    def identities(self, n: int) -> Tensor:
        return self.family.identity().expand(n, -1).clone()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.identities(n)

    def test_elements(self) -> Tensor:
        return self.identities(2)

    def layer_elements(self, stride: int) -> Tensor | None:
        found = self.family.layer_elements(stride)
        return None if found is None else self.identities(1)

    def __getattr__(self, name: str) -> object:
        return getattr(self.family, name)

    def apply(self, images: Tensor, elements: Tensor) -> Tensor:
        return self.family.apply(images, elements)

    def canvas(self, images: Tensor) -> Tensor:
        return self.family.canvas(images)

    def inverse(self, elements: Tensor) -> Tensor | None:
        return self.family.inverse(elements)

    def act_on_features(self, features: Tensor, element: Tensor, stride: int) -> Tensor | None:
        return self.family.act_on_features(features, element, stride)


ALL_FAMILIES = [Rot90(), Flip(), CircularShift(4), Shift(3), Rotation(), Affine(), Elastic(), Diffeo()]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_measure_gives_the_known_answer_at_the_identity(backbone: str) -> None:
    """Every family, every backbone, every measure: at the identity element nothing moves."""
    families = [AtIdentity(family) for family in ALL_FAMILIES]
    values = measure(
        cnn(BACKBONES[backbone]()), shapes_split(8, 17), EquivarianceMetrics(families, angle_step=0)
    )
    errors = {
        k: v
        for k, v in values.items()
        if k.startswith("test/equiv/") and (k.endswith("_error") or "/layer/" in k)
    }
    assert {f"test/equiv/{f.name}/invariance_error" for f in families} <= set(errors)
    assert "test/equiv/rotation/round_trip_error" in errors
    assert any("/layer/" in k for k in errors)
    assert max(errors.values()) < 1e-12, {k: v for k, v in errors.items() if v}  # escnn: float rounding
    consistency = {k: v for k, v in values.items() if k.endswith("/consistency")}
    assert len(consistency) == len(families) and min(consistency.values()) == 1.0


def test_shifts_are_measured_on_a_canvas_that_nothing_leaves() -> None:
    """The mean intensity is invariant to lossless shifts; on the disk (or cropped by the frame)
    it is not. The curve uses the same canvas."""
    split = random_split(count=16, size=15)
    callback = EquivarianceMetrics(
        [Shift(4)], measures=["invariance_error", "curve"], angle_step=0, max_shift=4
    )
    values = measure(plain_net(GlobalMean()), split, callback)
    assert values["test/equiv/shift/invariance_error"] < 1e-10
    accuracy = callback.curves["test/shift"]["acc"]
    assert len(accuracy) == 5 and len(set(accuracy)) == 1, accuracy


def test_the_subset_is_stratified_seeded_and_the_same_every_time() -> None:
    labels = torch.arange(10).repeat_interleave(50)  # class-sorted, like an image folder
    chosen = stratified_subset(labels, 40)
    assert torch.equal(labels[chosen].bincount(), torch.full((10,), 4))
    assert torch.equal(chosen, stratified_subset(labels, 40))
    assert not torch.equal(chosen.sort().values, torch.arange(40))
    # and through the callback: a class-sorted split is measured on every class
    split = Split(torch.zeros(500, 1, 8, 8, dtype=torch.uint8), labels)
    callback = EquivarianceMetrics(test_num_samples=20)
    trainer = SimpleNamespace(global_rank=0, world_size=1, datamodule=SimpleNamespace(splits={"test": split}))
    _, targets, _, _ = callback._subset(trainer, "test", torch.device("cpu"), segmentation=False)
    assert torch.equal(targets.bincount(), torch.full((10,), 2))


@pytest.mark.parametrize("family", ALL_FAMILIES, ids=lambda f: f.name)
def test_test_elements_are_spread_and_away_from_the_identity(family: TransformFamily) -> None:
    elements = family.test_elements()
    identity = family.identity()
    assert not (elements == identity).all(dim=1).any()
    if family.name == "rotation":  # the full circle: four angles 90 degrees apart, away from 0
        angles = elements[:, 0]
        assert torch.allclose(angles.diff(), torch.full((3,), 90.0)) and angles.abs().min() > 30
        # at least 10 degrees from every multiple of 22.5: the elements of C4, C8 and C16
        assert ((angles / 22.5 - (angles / 22.5).round()).abs() * 22.5 > 10).all(), angles
    if family.name in ("shift", "circular_shift"):  # four directions, odd: never a whole stride-2 cell
        assert len(elements) == 4 and (elements % 2 == 1).all()
        assert torch.equal(elements.sum(0), torch.zeros(2))
    if family.name == "rot90":
        assert elements[:, 0].tolist() == [1.0, 2.0, 3.0]


def test_invariance_error_is_the_published_formula_and_ignores_offsets() -> None:
    """Against the formula written out, on a tiny CNN; a constant added to every logit, or a
    scale, changes nothing; an image whose logits are all but zero does not dominate."""
    net = cnn(StandardCNN(1, width=4, depth=2), classes=3)
    split = shapes_split(12, 17)
    callback = EquivarianceMetrics([Rot90()], measures=["invariance_error"])
    value = measure(net, split, callback)["test/equiv/rot90/invariance_error"]
    images = split.images.float() / 255
    images = images[stratified_subset(split.labels, 12)]
    with torch.no_grad():
        moved = [net(images.rot90(k, (-2, -1))) for k in (1, 2, 3)]
        expected = spread_error(moved, net(images))
    assert value == pytest.approx(expected, rel=1e-6)

    shifted = copy.deepcopy(net)  # logits 3 f(x) + 10: the same predictions
    shifted.head.fc.weight.data *= 3.0
    shifted.head.fc.bias.data = 3.0 * shifted.head.fc.bias.data + 10.0
    assert measure(shifted, split, callback)["test/equiv/rot90/invariance_error"] == pytest.approx(
        value, rel=1e-5
    )
    # one image with (near) zero logits: the ratio of means does not explode
    metric = SpreadRelativeError()
    reference = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1e-9, 0.0]])
    metric.update_reference(reference)
    metric.update(reference + torch.tensor([[0.0, 0.0], [0.0, 0.0], [1e-3, 0.0]]), reference)
    assert metric.compute().item() < 1e-5


def test_consistency_is_random_pairs_of_elements_per_image() -> None:
    """Zhang 2019 / APS: two independent random elements per image; the flip of a left-right
    response agrees exactly when the two draws are equal (or the halves tie)."""
    split = random_split(count=32)
    callback = EquivarianceMetrics([Flip()], measures=["consistency"], draws=3, seed=5)
    value = measure(plain_net(LeftRight()), split, callback)["test/equiv/flip/consistency"]
    agree = []
    for draw in range(3):  # the draws are numbered: an image's elements do not depend on batching
        first = Flip().sample(32, torch.Generator().manual_seed(5 * 1_000_003 + 2 * draw))
        second = Flip().sample(32, torch.Generator().manual_seed(5 * 1_000_003 + 2 * draw + 1))
        agree.append((first == second).float()[:, 0])
    assert value == pytest.approx(torch.cat(agree).mean().item())
    assert 0.2 < value < 0.8


def test_the_round_trip_is_what_interpolation_costs_and_no_floor_is_left() -> None:
    net = cnn(StandardCNN(1, width=4, depth=2), classes=3)
    split = shapes_split(12, 17)
    callback = EquivarianceMetrics([Rotation()], measures=["invariance_error", "round_trip_error"])
    values = measure(net, split, callback)
    assert not any("floor" in k for k in values)
    images = (split.images.float() / 255)[stratified_subset(split.labels, 12)]
    rotation = Rotation()
    with torch.no_grad():
        back = []
        for angle in rotation.test_elements()[:, 0].tolist():
            there = rotation.apply(images, torch.full((12, 1), angle))
            back.append(net(disk_mask(rotation.apply(there, torch.full((12, 1), -angle)))))
        expected = spread_error(back, net(disk_mask(images)))
    assert values["test/equiv/rotation/round_trip_error"] == pytest.approx(expected, rel=1e-6)
    assert (
        values["test/equiv/rotation/round_trip_error"] > 0
    )  # a bilinear warp there and back is not lossless


def test_layerwise_shift_error_sees_aliasing_blur_below_max_at_every_strided_layer() -> None:
    torch.manual_seed(0)
    max_backbone = AntialiasedCNN(1, width=8, depth=3, downsample="max", circular=True)
    blur_backbone = AntialiasedCNN(1, width=8, depth=3, downsample="blur", circular=True)
    blur_backbone.load_state_dict(max_backbone.state_dict())  # the same weights, only the pooling differs
    callback = EquivarianceMetrics([CircularShift()], measures=["layer"])
    split = shapes_split(16)
    layers = {}
    for name, backbone in (("max", max_backbone), ("blur", blur_backbone)):
        layers[name] = measure(SymmetryNet(Normalize([0.1], [0.25]), backbone, 8).eval(), split, callback)
    assert set(layers["max"]) == {f"test/equiv/circular_shift/layer/stage{i}" for i in (1, 2, 3)}
    for key, value in layers["max"].items():
        assert layers["blur"][key] < value, (key, layers)
    assert min(layers["max"].values()) > 0.01  # a max-pooled map does not follow a one-pixel shift


def test_the_visible_region_is_seen_by_both_views() -> None:
    """Every pixel counted holds content in the moved view too (the moved disk, not the moved frame)."""
    images = torch.zeros(1, 1, 21, 21)
    family = Affine(degrees=0.0, max_pixels=4.0, scale=(1.0, 1.0), shear=0.0)
    elements = torch.tensor([[0.0, 0.0, 4.0, 1.0, 0.0]])  # 4 pixels to the right
    seen = visible_region(family, elements, images)[0, 0]
    disk = disk_mask(torch.ones(1, 1, 21, 21))
    moved_disk = family.apply(disk, elements)[0, 0]
    assert seen.any() and (disk[0, 0][seen] > 0.999).all() and (moved_disk[seen] > 0.999).all()


def test_c4_model_is_rot90_invariant_and_a_plain_cnn_is_not() -> None:
    split = shapes_split()
    callback = EquivarianceMetrics([Rot90()], measures=["invariance_error", "consistency"])
    c4 = cnn(EquivariantCNN(1, "C", 4, width=8, depth=2))
    plain = cnn(StandardCNN(1, width=8, depth=2))
    c4_values, cnn_values = measure(c4, split, callback), measure(plain, split, callback)
    assert c4_values["test/equiv/rot90/invariance_error"] < 1e-8
    assert c4_values["test/equiv/rot90/consistency"] == 1.0
    assert cnn_values["test/equiv/rot90/invariance_error"] > 1e-2


@pytest.mark.parametrize("group,order", [("C", 4), ("D", 4), ("SO2", 0), ("O2", 0)])
def test_escnn_layerwise_profile_is_zero_for_its_group(group: str, order: int) -> None:
    net = cnn(EquivariantCNN(1, group, order, width=8, depth=2))
    families = [Rot90(), Flip()] if group in ("D", "O2") else [Rot90()]
    values = measure(net, shapes_split(16, 29), EquivarianceMetrics(families, measures=["layer"]))
    assert len(values) == len(families) * 3  # stage1, stage2, invariant
    assert max(values.values()) < 1e-8, values


def test_plain_cnn_layerwise_profile_is_not_zero_under_rot90() -> None:
    net = cnn(StandardCNN(1, width=8, depth=2))
    values = measure(net, shapes_split(16), EquivarianceMetrics([Rot90()], measures=["layer"]))
    assert min(values.values()) > 1e-2


def test_aps_model_is_exactly_invariant_and_consistent_under_circular_shifts() -> None:
    net = cnn(AntialiasedCNN(1, width=8, depth=2, downsample="aps"))
    callback = EquivarianceMetrics([CircularShift(8)], measures=["invariance_error", "consistency"])
    values = measure(net, shapes_split(), callback)
    assert values["test/equiv/circular_shift/consistency"] == 1.0
    assert values["test/equiv/circular_shift/invariance_error"] < 1e-8


def test_blur_model_has_lower_shift_error_than_max_model() -> None:
    torch.manual_seed(0)
    max_backbone = AntialiasedCNN(1, width=8, depth=3, downsample="max")
    blur_backbone = AntialiasedCNN(1, width=8, depth=3, downsample="blur")
    blur_backbone.load_state_dict(max_backbone.state_dict())  # the same weights, only the pooling differs
    split = shapes_split(128)
    callback = EquivarianceMetrics([CircularShift(3)], measures=["invariance_error"])
    errors = {}
    for name, backbone in (("max", max_backbone), ("blur", blur_backbone)):
        net = SymmetryNet(Normalize([0.1], [0.25]), backbone, 8).eval()
        errors[name] = measure(net, split, callback)["test/equiv/circular_shift/invariance_error"]
    assert errors["blur"] < 0.7 * errors["max"], errors


def test_curves_and_an_unknown_measure() -> None:
    net = cnn(StandardCNN(1, width=8, depth=2))
    callback = EquivarianceMetrics([Rotation()], measures=["curve"], angle_step=90.0, max_shift=2)
    split = shapes_split(16)
    measure(net, split, callback)
    assert callback.curves["test/rotation"]["angle"] == [0.0, 90.0, 180.0, 270.0]
    assert callback.curves["test/shift"]["pixels"] == [0.0, 1.0, 2.0]
    # Each point is the accuracy on the views it names: at 0°, the identity's view on the disk.
    images, family = split.images.float() / 255, Rotation()
    for index, angle in ((0, 0.0), (1, 90.0)):
        with torch.no_grad():
            logits = net(family.measured(images, torch.full((len(images), 1), angle)))
        expected = (logits.argmax(1) == split.labels).float().mean().item()
        assert callback.curves["test/rotation"]["acc"][index] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(SymtrainError, match="unknown measure 'floor'.*invariance_error"):
        EquivarianceMetrics(measures=["floor"]).chosen("classification")


def test_accuracy_and_layerwise_error_against_their_formulas() -> None:
    net = cnn(StandardCNN(1, width=4, depth=2), classes=3)
    split = shapes_split(12, 17)
    values = measure(net, split, EquivarianceMetrics([Rot90()], measures=["acc", "layer"]))
    chosen = stratified_subset(split.labels, 12)
    images, labels = (split.images.float() / 255)[chosen], split.labels[chosen]
    with torch.no_grad():
        hits = [(net(images.rot90(k, (-2, -1))).argmax(1) == labels).float() for k in (1, 2, 3)]
        assert values["test/equiv/rot90/acc"] == pytest.approx(torch.cat(hits).mean().item())
        reference = net.backbone.layer_outputs(net.normalize(images))["stage1"].double()
        moved = net.backbone.layer_outputs(net.normalize(images.rot90(1, (-2, -1))))["stage1"].double()
        numerator = (moved - reference.rot90(1, (-2, -1))).pow(2).sum(1).mean()
        pairs = [
            (reference[i] - reference[j]).pow(2).sum(0).mean() for i in range(12) for j in range(12) if i != j
        ]
    expected = (numerator / torch.stack(pairs).mean()).item()
    assert values["test/equiv/rot90/layer/stage1"] == pytest.approx(expected, rel=1e-6)


def test_a_new_measure_is_one_class_and_the_summary_describes_it() -> None:
    """A measure defined anywhere runs by its key, and carries its definition to the report."""

    class MeanLogit(Measure):
        """The mean of the logits of g·x: a toy."""

        key, title, caption = "mean_logit", "mean logit", "Mean logit"
        tasks = ("classification",)

        def update(self, batch, family, record, prefix) -> None:  # noqa: ANN001
            for _, logits in batch.test_views(family):
                record.mean(f"{prefix}/{self.key}", logits.mean(dim=1))

    callback = EquivarianceMetrics([Flip()], measures=["acc", "mean_logit"])
    values = measure(cnn(StandardCNN(1, width=4, depth=1)), shapes_split(8, 16), callback)
    assert set(values) == {"test/equiv/flip/acc", "test/equiv/flip/mean_logit"}
    described = callback.describe("classification")[1]
    assert described["definition"] == "The mean of the logits of g·x: a toy."
    assert "mean_logit" not in [
        m.key for m in EquivarianceMetrics().chosen("classification")
    ]  # not a default


def test_runs_configured_before_measures_existed_still_parse() -> None:
    """An old run's config.yaml says ``layerwise``: testing or resuming it still works."""


def test_measures_run_on_an_inference_copy_only_where_it_is_the_same_function() -> None:
    """On the CPU a plain network is measured through a copy with its conv + batch norm pairs
    folded (the same logits to rounding); a network that decides a discrete pose per input, or
    one that cannot be copied, is measured as it is."""
    import threading

    from symtrain.metrics.measuring import measured_network
    from symtrain.symmetry import Canonicalization

    images = torch.rand(4, 1, 16, 16)
    plain = cnn(StandardCNN(1, width=4, depth=2), classes=3)
    fast = measured_network(plain, images)
    assert fast is not plain and not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    with torch.no_grad():
        assert torch.allclose(fast(images), plain(images), atol=1e-6)
    canonicalized = Canonicalization(width=4, depth=1).wrap(plain).eval()
    assert measured_network(canonicalized, images) is canonicalized
    plain.lock = threading.Lock()  # deepcopy cannot copy it
    assert measured_network(plain, images) is plain
