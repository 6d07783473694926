"""Equivariance metrics, validated on cases whose answers are known."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from symtrain.backbones import AntialiasedCNN, Backbone, EquivariantCNN, StandardCNN
from symtrain.data import Split, SyntheticShapes
from symtrain.errors import SymtrainError
from symtrain.metrics import EquivarianceMetrics, Measure
from symtrain.metrics.base import Batch
from symtrain.metrics.functional import SpreadRelativeError, centred, visible_region
from symtrain.metrics.lie import GENERATORS, lie_derivative, tangent
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


class GlobalMean(Backbone):
    """The mean intensity and its square: invariant to every exact family, and to shifts on a
    canvas that nothing leaves."""

    out_channels = 2

    def forward(self, images: Tensor) -> Tensor:
        mean = images.mean((1, 2, 3))
        return torch.stack([mean, mean**2], dim=1)[..., None, None]


class Identity(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


def plain_net(backbone: Backbone) -> SymmetryNet:
    net = SymmetryNet(Normalize([0.0], [1.0]), backbone, num_classes=2)
    net.head = Identity()  # logits are the pooled features themselves: responses stay readable
    net.head.forward = lambda features: features.mean((-2, -1))
    return net.eval()


def measure(
    net: nn.Module, split: Split, callback: EquivarianceMetrics, **module: object
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
    values = callback.measure(trainer, module, "test")
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


def cnn(backbone: Backbone, classes: int = 8) -> SymmetryNet:
    torch.manual_seed(0)
    return SymmetryNet(Normalize([0.1], [0.25]), backbone, classes).eval()


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
BACKBONES = {
    "cnn": lambda: StandardCNN(1, width=4, depth=2),
    "blur": lambda: AntialiasedCNN(1, width=4, depth=2, downsample="blur"),
    "aps": lambda: AntialiasedCNN(1, width=4, depth=2, downsample="aps"),
    "c4": lambda: EquivariantCNN(1, "C", 4, width=2, depth=2),
    "d4": lambda: EquivariantCNN(1, "D", 4, width=2, depth=2),
    "o2": lambda: EquivariantCNN(1, "O2", 0, width=2, depth=2),
}


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
    assert "layer" not in [m.key for m in EquivarianceMetrics(layerwise=False).chosen("segmentation")]
    assert "layer" in [m.key for m in EquivarianceMetrics(layerwise=True).chosen("classification")]


# -- R_f and the Lie derivative, as their papers' code computes them ----------------------------


class BorderPixels(nn.Module):
    """The top-left and bottom-right pixels: fixed by every diffeomorphism of the family (its
    displacement vanishes on the border), moved by any noise."""

    def forward(self, images: Tensor) -> Tensor:
        return torch.stack([images[:, 0, 0, 0], images[:, 0, -1, -1]], dim=1)


class Pixels(nn.Module):
    """The identity map: the image's pixels as the outputs."""

    def forward(self, images: Tensor) -> Tensor:
        return images.flatten(1)


def diffeo_inputs(images: Tensor, draw: int, delta: float, cut: int) -> tuple[Tensor, Tensor]:
    """τx and x + η of the measure's draw ``draw`` (the same seeded τ and η), ‖η‖ = ‖τx − x‖
    per image, as diffeo-sota's ``diffeo_imgs`` makes them."""
    count = len(images)
    batch = Batch(nn.Identity(), images, torch.zeros(count), False, 8, torch.arange(count), count, 0)
    family = Diffeo(delta, cut)
    deformed = family.apply(images, batch.sample(family, draw))
    sigma = (deformed - images).pow(2).sum([1, 2, 3], keepdim=True).sqrt()
    eta = batch.normal(draw)
    return deformed, images + eta / eta.pow(2).sum([1, 2, 3], keepdim=True).sqrt() * sigma


def relative_distance(f0: Tensor, views: list[tuple[Tensor, Tensor]]) -> tuple[float, float]:
    """diffeo-sota's ``results/utils.py: relative_distance``, written out: D and G as the median
    over the images of each output's squared change, summed over the outputs, over the median
    squared distance between two images' outputs (``torch.cdist(f0, f0).pow(2).median()``, the
    diagonal included). Several draws pool their images."""
    f0 = f0.double().reshape(len(f0), -1)
    deno = torch.cdist(f0, f0).pow(2).median().item()
    fd = torch.cat([d.double().reshape(len(d), -1) for d, _ in views])
    fq = torch.cat([q.double().reshape(len(q), -1) for _, q in views])
    base = f0.repeat(len(views), 1)
    d = (fd - base).pow(2).median(0).values.sum().item() / deno
    g = (fq - base).pow(2).median(0).values.sum().item() / deno
    return d, g


@pytest.mark.parametrize("draws", [1, 2])
def test_r_f_is_the_reference_codes_medians(draws: int) -> None:
    """D_f, G_f and R_f against diffeo-sota's relative_distance on a tiny CNN (draws = 1 is its
    protocol; more draws pool their images), R_f per stage the same on the stage's map, and the
    paper's written ratio of means beside it as R_f_mean; the two differ on this model, so the
    means (symtrain's R_f before) fail here."""
    net = cnn(StandardCNN(1, width=4, depth=2))
    split = shapes_split(24, 17)
    callback = EquivarianceMetrics(
        [Shift(2)], measures=["diffeo"], draws=draws, diffeo_delta=1.5, diffeo_cut=4
    )
    values = measure(net, split, callback)
    images = callback._subsets[("test", id(split))].images.float() / 255
    inputs = [diffeo_inputs(images, draw, 1.5, 4) for draw in range(draws)]
    with torch.no_grad():
        f0 = net(images)
        views = [(net(deformed), net(noisy)) for deformed, noisy in inputs]
    d_f, g_f = relative_distance(f0, views)
    assert values["test/diffeo/D_f"] == pytest.approx(d_f, rel=1e-5)
    assert values["test/diffeo/G_f"] == pytest.approx(g_f, rel=1e-5)
    assert values["test/diffeo/R_f"] == pytest.approx(d_f / g_f, rel=1e-5)
    deformed = torch.cat([(d.double() - f0.double()).pow(2).sum(1) for d, _ in views]).sum()
    noisy = torch.cat([(q.double() - f0.double()).pow(2).sum(1) for _, q in views]).sum()
    mean_ratio = (deformed / noisy).item()
    assert values["test/diffeo/R_f_mean"] == pytest.approx(mean_ratio, rel=1e-5)
    assert abs(values["test/diffeo/R_f"] / mean_ratio - 1) > 0.05  # medians and means part here
    # each stage's map: the same medians over its C·h·w values
    with torch.no_grad():
        stages = net.backbone.layer_outputs(net.normalize(images))
        for name, reference in stages.items():
            outputs = [[net.backbone.layer_outputs(net.normalize(x))[name] for x in both] for both in inputs]
            pairs = [(deformed, noisy) for deformed, noisy in outputs]
            d_layer, g_layer = relative_distance(reference, pairs)
            assert values[f"test/diffeo/R_f/layer/{name}"] == pytest.approx(d_layer / g_layer, rel=1e-4)


def test_r_f_known_answers() -> None:
    """An invariant map: D_f = R_f = 0, noise still moves it; the identity map: R_f_mean = 1
    exactly (‖η‖ = ‖τx − x‖ per image); a scale or an offset of f changes nothing."""
    split = random_split(count=16, size=15)
    callback = EquivarianceMetrics([Shift(2)], measures=["diffeo"], draws=2)
    values = measure(BorderPixels(), split, callback)
    assert values["test/diffeo/R_f"] == 0 and values["test/diffeo/D_f"] == 0
    assert values["test/diffeo/R_f_mean"] == 0 and values["test/diffeo/G_f"] > 0
    values = measure(Pixels(), split, callback)
    assert values["test/diffeo/R_f_mean"] == pytest.approx(1.0, rel=1e-6)
    assert values["test/diffeo/R_f"] > 0  # the medians keep no such exact value
    net = cnn(StandardCNN(1, width=4, depth=2))
    scaled = copy.deepcopy(net)  # logits 3 f(x) + 10
    scaled.head.fc.weight.data *= 3.0
    scaled.head.fc.bias.data = 3.0 * scaled.head.fc.bias.data + 10.0
    plain, other = measure(net, split, callback), measure(scaled, split, callback)
    for name in ("D_f", "G_f", "R_f", "R_f_mean"):
        assert other[f"test/diffeo/{name}"] == pytest.approx(plain[f"test/diffeo/{name}"], rel=1e-4), name


def test_r_f_of_a_large_map_keeps_a_fixed_draw_of_its_coordinates() -> None:
    """Beyond ``coordinates``, the same seeded coordinates in every update, and R_f is the
    medians' ratio over them."""
    from symtrain.metrics.diffeo import MedianStabilityRatio  # new with the medians

    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(6, 3, 4, 4, generator=generator)
    deformed = [reference + 0.1 * torch.randn(6, 3, 4, 4, generator=generator) for _ in range(2)]
    noisy = [reference + torch.randn(6, 3, 4, 4, generator=generator) for _ in range(2)]
    ratio = MedianStabilityRatio(coordinates=20, dtype=torch.float32)
    for d, q in zip(deformed, noisy, strict=True):
        ratio.update(d, q, reference)
    chosen = ratio.chosen
    assert chosen is not None and len(chosen) == 20 and len(set(chosen.tolist())) == 20
    d = torch.cat([(x - reference).pow(2).flatten(1)[:, chosen] for x in deformed])
    q = torch.cat([(x - reference).pow(2).flatten(1)[:, chosen] for x in noisy])
    expected = d.median(0).values.double().sum() / q.median(0).values.double().sum()
    assert ratio.compute().item() == pytest.approx(expected.item(), rel=1e-6)


def warp(images: Tensor, generator: str, t: float) -> Tensor:
    """The generator's flow for time t, written out independently of the measure: bilinear
    resampling at p − t·v(p), the image mirrored about its border pixels' centres beyond the
    frame, as lie-deriv's warp (first order in t, which a symmetric difference needs)."""
    (a, b), (c, d) = GENERATORS[generator][0]
    bx, by = GENERATORS[generator][1]
    height, width = images.shape[-2:]
    y = torch.arange(height, dtype=images.dtype)[:, None].expand(height, width)
    x = torch.arange(width, dtype=images.dtype)[None, :].expand(height, width)
    cx, cy = x - (width - 1) / 2, y - (height - 1) / 2
    sx = x - t * (a * cx + b * cy + bx)
    sy = y - t * (c * cx + d * cy + by)
    grid = torch.stack([sx / (width - 1) * 2 - 1, sy / (height - 1) * 2 - 1], dim=-1)
    grid = grid.expand(len(images), -1, -1, -1)
    return nn.functional.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=True
    )


class SmoothCNN(Backbone):
    """Convolutions, tanh and average pooling: differentiable everywhere. (Max-pooling is not
    where a window ties, as everywhere in the zeros outside the disk: there a difference
    quotient and the derivative disagree however small the step.)"""

    out_channels = 6

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)


def bordered_images(count: int = 3, size: int = 19) -> Tensor:
    """Smooth images with content up to the frame's edge: a blob on a tilted bright ground."""
    generator = torch.Generator().manual_seed(1)
    y, x = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    images = []
    for _ in range(count):
        cy, cx = (torch.rand(2, generator=generator) * size).tolist()
        tilt = torch.rand(2, generator=generator) - 0.5
        ground = 0.5 + 0.4 * torch.sin((tilt[0] * x + tilt[1] * y) / 3)
        images.append(ground + 0.3 * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 8))
    return torch.stack(images)[:, None].double()


@pytest.mark.parametrize("generator", list(GENERATORS))
def test_lie_derivative_is_the_reference_warps_derivative_up_to_the_border(generator: str) -> None:
    """d/dt softmax f(g_t·x) at 0 against the symmetric difference through lie-deriv's
    reflecting bilinear warp, on images whose content reaches the border (the rotation on the
    inscribed disk); zeros beyond the frame (symtrain's tangent before) give another value."""
    torch.manual_seed(0)
    net = SymmetryNet(Normalize([0.5], [0.25]), SmoothCNN(), 5).double().eval()
    images = bordered_images()
    framed = disk_mask(images) if generator == "rotation" else images
    eps = 1e-6
    with torch.no_grad():
        derivative = lie_derivative(net, images, generator)
        moved = [net(warp(framed, generator, s * eps)).softmax(dim=1) for s in (1, -1)]
    difference = (moved[0] - moved[1]) / (2 * eps)
    assert difference.abs().max() > 1e-4  # a CNN is not invariant to any of them
    assert torch.allclose(derivative, difference, rtol=1e-3, atol=1e-7), (derivative - difference).abs().max()
    with torch.no_grad():  # the other boundary, for the record: far from the reference on these images
        zeros = lie_derivative(net, images, generator, boundary="zeros")
    assert (zeros - difference).abs().max() > 100 * (derivative - difference).abs().max()


def test_lie_derivative_of_a_uniform_image_is_zero() -> None:
    """A uniform image is its own mirror, so no warp of it changes anything: 0 for every model
    (the rotation on the disk aside, whose edge is not uniform); zeros beyond the frame would
    see an edge there."""
    net = cnn(StandardCNN(1, width=4, depth=2))
    images = torch.full((2, 1, 17, 17), 0.7)
    with torch.no_grad():
        for generator in ("translation_x", "translation_y", "scale", "shear", "stretch"):
            assert lie_derivative(net, images, generator).abs().max() == 0, generator
            assert tangent(images, generator).abs().max() == 0
            assert tangent(images, generator, boundary="zeros").abs().max() > 0.3


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
