"""Every plugin honours its contract: backbones, transformation families, symmetry strategies
and data modules are discovered (every public subclass in the package), built at the tiny sizes they
declare (``examples``), and checked, including "declared exact => measured exact" for every
family a backbone claims. A new plugin is tested by being written; no list here names one.
(Measures have theirs in test_metrics: every registered measure at the identity element.)"""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import symtrain
from symtrain.backbones import Backbone
from symtrain.data import ImageDataModule
from symtrain.errors import SymtrainError
from symtrain.module import Normalize, SegmentationNet
from symtrain.symmetry import Augmentation, SymmetryStrategy
from symtrain.transforms import TransformFamily


def shipped(base: type) -> list[type]:
    """Every public subclass of ``base`` defined in the package (all of its modules imported)."""
    for module in pkgutil.walk_packages(symtrain.__path__, "symtrain."):
        importlib.import_module(module.name)
    found, pending = set(), [base]
    while pending:
        for cls in pending.pop().__subclasses__():
            pending.append(cls)
            if cls.__module__.startswith("symtrain.") and not cls.__name__.startswith("_"):
                found.add(cls)
    return sorted(found, key=lambda cls: cls.__name__)


def examples(base: type) -> list[Any]:
    return [
        pytest.param(cls, kwargs, id=f"{cls.__name__}-{index}")
        for cls in shipped(base)
        for index, kwargs in enumerate(cls.examples)
    ]


def test_every_kind_has_plugins() -> None:
    """Discovery finds what ships (a broken import would silently test nothing)."""
    names = {cls.__name__ for base in (Backbone, TransformFamily, SymmetryStrategy) for cls in shipped(base)}
    assert {"StandardCNN", "ResNet", "EquivariantWideResNet", "Rot90", "Diffeo", "Augmentation"} <= names


def test_the_package_docstring_names_every_strategy() -> None:
    for cls in shipped(SymmetryStrategy):
        words = re.sub(r"(?<!^)([A-Z])", r" \1", cls.__name__).lower()  # GroupAveraging: group averaging
        assert words in " ".join(symtrain.__doc__.split()), cls


def relative_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return ((after.double() - before.double()).norm() / before.double().norm()).item()


@pytest.mark.parametrize("cls,kwargs", examples(Backbone))
class TestBackboneContract:
    def build(self, cls: type, kwargs: dict[str, Any], in_channels: int = 1) -> Backbone:
        torch.manual_seed(0)
        return cls(in_channels, **kwargs)

    def size(self, backbone: Backbone) -> int:
        """An odd size where the backbone's claims hold, else the first that it accepts."""
        return next(s for s in (29, 28, 33, 32) if backbone.input_size_problem(s) is None)

    def test_features_and_gradients(self, cls: type, kwargs: dict[str, Any]) -> None:
        for in_channels in (1, 3):
            backbone = self.build(cls, kwargs, in_channels)
            features = backbone(torch.rand(2, in_channels, 32, 32))
            assert features.dim() == 4 and features.shape[:2] == (2, backbone.out_channels)
            features.sum().backward()
            assert all(p.grad is not None for p in backbone.parameters() if p.requires_grad)

    def test_declared_exact_is_measured_exact(self, cls: type, kwargs: dict[str, Any]) -> None:
        """Every exact claim, under each of the family's test elements, on the pooled features
        of a random model at a size the backbone accepts: a relative change below 1e-5."""
        backbone = self.build(cls, kwargs).eval()
        declared = backbone.declared_symmetries()
        assert all(isinstance(f, TransformFamily) for f in declared)
        assert set(declared.values()) <= {"exact", "approximate"}
        size = self.size(backbone)
        images = torch.rand(3, 1, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            pooled = backbone(images).mean((-2, -1))
            for family in [f for f, how in declared.items() if how == "exact"]:
                for element in family.test_elements():
                    moved = family.apply(images, element.expand(len(images), -1))
                    change = relative_change(pooled, backbone(moved).mean((-2, -1)))
                    assert change < 1e-5, (family, element, change)

    def test_layer_outputs_end_in_forward(self, cls: type, kwargs: dict[str, Any]) -> None:
        backbone = self.build(cls, kwargs).eval()
        images = torch.rand(2, 1, 28, 28)
        with torch.no_grad():
            layers = backbone.layer_outputs(images)
            assert list(layers) == list(backbone.layer_strides())
            if layers:
                assert torch.allclose(list(layers.values())[-1], backbone(images), atol=1e-6)
                # an edit that changes nothing leaves every map as it was
                same = backbone.layer_outputs(images, lambda name, features: features)
                assert all(torch.equal(same[name], layers[name]) for name in layers)

    def test_encode_returns_the_declared_pyramid(self, cls: type, kwargs: dict[str, Any]) -> None:
        """Decoders, size checks and layer-wise measures read ``feature_info``; ``encode``
        must return exactly those maps: their channels, and sizes of side / stride (rounded
        either way, as strided layers and polyphase sampling do)."""
        backbone = self.build(cls, kwargs).eval()
        declared = backbone.feature_info()
        if not declared:  # no dense form: nothing declared, nothing to hold it to
            return
        assert backbone.total_stride == declared[-1].stride
        for size in (28, 33):
            with torch.no_grad():
                pyramid = backbone.encode(torch.rand(2, 1, size, size))
            maps = [*pyramid.skips, pyramid.bottom]
            assert [m.shape[1] for m in maps] == [f.channels for f in declared]
            for features, feature in zip(maps, declared, strict=True):
                assert size // feature.stride <= features.shape[-1] <= -(-size // feature.stride), feature

    def test_dense_form_or_one_line_refusal(self, cls: type, kwargs: dict[str, Any]) -> None:
        backbone = self.build(cls, kwargs)
        try:
            net = SegmentationNet(Normalize([0.5], [0.5]), backbone, 3).eval()
        except SymtrainError as error:  # e.g. fields of two groups have no dense form
            assert len(str(error).splitlines()) == 1
            return
        for size in (28, 29):
            with torch.no_grad():
                assert net(torch.rand(2, 1, size, size)).shape == (2, 3, size, size)

    def test_checkpoint_cache_rule_keeps_every_weight(self, cls: type, kwargs: dict[str, Any]) -> None:
        backbone = self.build(cls, kwargs)
        state = backbone.state_dict()
        assert backbone.without_cache(state).keys() == state.keys()  # what it saves is all weights
        assert isinstance(backbone.unsyncable_norms(), tuple)


def exact_claims_hold(net: nn.Module, claims: Any, images: torch.Tensor, dense: bool) -> None:
    """Every ``exact`` claim of ``claims`` on ``net`` under each of the family's test elements: the
    pooled features invariant (``dense``: the per-pixel outputs equivariant), relative change
    below 1e-4, in eval mode and in train mode (batch statistics; dropout, noise by design, off).
    float32 rounding alone moves a ResNet-50's pooled features by 1.5e-5 at some drawn settings;
    every false claim found moved them by 4e-3 or more."""
    for training in (False, True):
        net.train(training)
        for module in net.modules():
            if "Dropout" in type(module).__name__:  # torch's and escnn's (FieldDropout, ...)
                module.eval()
        with torch.no_grad():
            reference = net(images)
            for family in [f for f, how in claims.items() if how == "exact"]:
                for element in family.test_elements():
                    elements = element.expand(len(images), -1)
                    moved = net(family.apply(images, elements))
                    if dense:
                        change = relative_change(family.apply(reference, elements), moved)
                    else:
                        change = relative_change(reference.mean((-2, -1)), moved.mean((-2, -1)))
                    assert change < 1e-4, (family, element.tolist(), "train" if training else "eval", change)


DRAWN = [pytest.param(cls, id=cls.__name__) for cls in shipped(Backbone) if cls.setting_ranges]


def test_every_backbone_says_what_its_settings_range_over() -> None:
    assert {param.values[0] for param in DRAWN} == set(shipped(Backbone))


@pytest.mark.parametrize("cls", DRAWN)
@settings(max_examples=50)
@given(data=st.data())
def test_every_exact_claim_holds_for_drawn_settings(cls: type[Backbone], data: st.DataObject) -> None:
    """Settings drawn from the ranges the class accepts (``setting_ranges``), an image size
    drawn among those it accepts (odd and even, from its total stride up): the forward pass
    runs, ``encode`` returns the declared pyramid, and every exact claim of the pooled features
    and of the dense form holds in eval and train mode. A setting the class refuses says why in
    one line; one that cannot be exact declares "approximate"."""
    ranges = {key: st.sampled_from(values) for key, values in cls.setting_ranges.items()}
    kwargs = data.draw(st.fixed_dictionaries(ranges), label="settings")
    in_channels = data.draw(st.sampled_from((1, 3)), label="in_channels")
    torch.manual_seed(0)
    try:
        backbone = cls(in_channels, **copy.deepcopy(kwargs))
    except SymtrainError as error:
        assert len(str(error).splitlines()) == 1
        return
    stride = backbone.total_stride
    problems = {size: backbone.input_size_problem(size) for size in range(max(stride, 8), 4 * stride + 10)}
    assert all(len(problem.splitlines()) == 1 for problem in problems.values() if problem)
    # The sizes a run accepts: its exact claims hold there, and the CLI refuses the rest in one line.
    accepted = [size for size, problem in problems.items() if problem is None]
    drawn = data.draw(st.sampled_from([size for size in accepted if size < 2 * stride + 10]), label="size")
    # Too small a map for a layer's padding, or maps of two sizes added (on some odd sides):
    # the CLI refuses such a size in one line naming one that runs. The next accepted one must.
    runs = (size for size in accepted if size >= drawn and backbone.runs_at(size, in_channels))
    size = next(runs, None)
    assert size is not None, f"{backbone.name} runs at none of the sizes it accepts from {drawn}"
    images = torch.rand(2, in_channels, size, size, generator=torch.Generator().manual_seed(size))
    exact_claims_hold(backbone, backbone.declared_symmetries(), images, dense=False)
    declared = backbone.feature_info()
    if declared:
        with torch.no_grad():
            pyramid = backbone.eval().encode(images)
        maps = [*pyramid.skips, pyramid.bottom]
        assert [m.shape[1] for m in maps] == [f.channels for f in declared]
        for features, feature in zip(maps, declared, strict=True):
            assert size // feature.stride <= features.shape[-1] <= -(-size // feature.stride), feature
    try:
        dense = SegmentationNet(Normalize([0.5] * in_channels, [0.5] * in_channels), backbone, 3)
    except SymtrainError as error:
        assert len(str(error).splitlines()) == 1
        return
    assert set(backbone.dense_symmetries()) <= set(backbone.declared_symmetries())
    exact_claims_hold(dense, backbone.dense_symmetries(), images, dense=True)


FAMILIES = [
    pytest.param(cls(**kwargs), id=f"{cls.__name__}-{index}")
    for cls in shipped(TransformFamily)
    for index, kwargs in enumerate(cls.examples)
]


@pytest.mark.parametrize("family", FAMILIES)
class TestFamilyContract:
    @pytest.mark.parametrize("size", [17, 28])
    def test_apply_keeps_shape_and_dtype(self, family: TransformFamily, size: int) -> None:
        images = torch.rand(4, 2, size, size)
        out = family.apply(images, family.sample(4, torch.Generator().manual_seed(1)))
        assert out.shape == images.shape and out.dtype == images.dtype

    def test_sampling_is_seeded(self, family: TransformFamily) -> None:
        first = family.sample(8, torch.Generator().manual_seed(3))
        assert torch.equal(first, family.sample(8, torch.Generator().manual_seed(3)))
        assert first.shape == (8, len(family.identity()))

    def test_the_identity_leaves_images_and_test_elements_do_not(self, family: TransformFamily) -> None:
        images = torch.rand(3, 1, 17, 17)
        identity = family.identity().expand(3, -1)
        assert torch.allclose(family.apply(images, identity), images, atol=1e-5)
        assert not (family.test_elements() == family.identity()).all(dim=1).any()

    def test_exact_families_permute_pixels(self, family: TransformFamily) -> None:
        if not family.exact:
            return
        images = torch.rand(4, 1, 16, 16)
        out = family.apply(images, family.sample(4, torch.Generator().manual_seed(2)))
        assert torch.equal(out.flatten(1).sort(dim=1).values, images.flatten(1).sort(dim=1).values)

    @pytest.mark.parametrize("size", [17, 28])
    def test_augmentation_is_apply_with_the_elements_it_drew(
        self, family: TransformFamily, size: int
    ) -> None:
        """Training's augmentation and the measurements' action are one: on random images and
        masks, the pipeline's output is ``apply`` with the elements it drew (masks: nearest);
        a family without an augmentation says so in one line."""
        try:
            pipeline = Augmentation([family], p=0.5).pipeline((size, size))
        except SymtrainError as error:
            assert len(str(error).splitlines()) == 1
            return
        torch.manual_seed(0)
        images = torch.rand(6, 1, size, size)
        masks = torch.randint(0, 3, (6, size, size))
        out, moved = pipeline(images, masks[:, None].float(), data_keys=["input", "mask"])
        params = pipeline._params[0].data
        drawn, applied = params["elements"], (params["batch_prob"] > 0.5).view(-1, 1, 1, 1)
        assert 0 < applied.sum() < len(images)  # p = 0.5: some samples kept as they are
        assert torch.allclose(out, torch.where(applied, family.apply(images, drawn), images), atol=1e-6)
        expected = torch.where(
            applied, family.apply(masks[:, None].float(), drawn, mode="nearest"), masks[:, None]
        )
        assert torch.equal(moved, expected.float())
        changed = pipeline(images)  # and it does change images
        assert changed.shape == images.shape and not torch.allclose(changed, images)

    def test_a_claim_covers_its_own_family(self, family: TransformFamily) -> None:
        twin = copy.deepcopy(family)
        assert family.covers(twin) and twin == family and hash(twin) == hash(family)
        assert family.label.startswith(family.name)


STRATEGIES = examples(SymmetryStrategy)


@pytest.mark.parametrize("cls,kwargs", STRATEGIES)
def test_strategy_augments_images_and_masks_alike(cls: type, kwargs: dict[str, Any]) -> None:
    strategy = cls(**copy.deepcopy(kwargs))
    assert all(isinstance(family, TransformFamily) for family in strategy.families)
    images, masks = torch.rand(4, 1, 15, 15), torch.randint(0, 3, (4, 15, 15))
    out = strategy.augment(images)
    assert out.shape == images.shape and out.dtype == images.dtype
    out, moved = strategy.augment(images, masks)
    assert (
        moved.shape == masks.shape and moved.dtype == torch.long and set(moved.unique().tolist()) <= {0, 1, 2}
    )


@pytest.mark.parametrize("cls,kwargs", STRATEGIES)
@pytest.mark.parametrize("backbone_cls,backbone_kwargs", examples(Backbone))
def test_strategy_accepts_or_refuses_a_backbone_in_one_line(
    cls: type, kwargs: dict[str, Any], backbone_cls: type, backbone_kwargs: dict[str, Any]
) -> None:
    strategy = cls(**copy.deepcopy(kwargs))
    backbone = backbone_cls(1, **backbone_kwargs)
    try:
        strategy.check(backbone, image_size=28)
    except SymtrainError as error:
        assert len(str(error).splitlines()) == 1 and "invariance" in str(error) or "multiple" in str(error)


@pytest.mark.parametrize("cls,kwargs", STRATEGIES)
@pytest.mark.parametrize("dense", [False, True], ids=["classification", "segmentation"])
def test_strategy_network_is_what_it_guarantees(cls: type, kwargs: dict[str, Any], dense: bool) -> None:
    """The network a strategy wraps around a plain CNN: the same output shape, and every
    ``exact`` guarantee measured in eval mode (invariant logits, equivariant per-pixel logits)
    below 1e-5 under each of the family's test elements, at an even and an odd size where the
    family is a group on it."""
    from symtrain.backbones import StandardCNN
    from symtrain.module import SymmetryNet

    strategy = cls(**copy.deepcopy(kwargs))
    torch.manual_seed(0)
    build = SegmentationNet if dense else SymmetryNet
    plain = build(Normalize([0.5], [0.5]), StandardCNN(1, width=4, depth=2), 3)
    net = strategy.wrap(plain).eval()
    assert net.backbone is plain.backbone
    for size in (32, 29):
        images = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(size))
        try:
            strategy.check(plain.backbone, image_size=size)
        except SymtrainError as error:  # a backbone it refuses, a stride that does not divide the size
            assert len(str(error).splitlines()) == 1
            continue
        with torch.no_grad():
            reference = net(images)
            assert reference.shape == plain(images).shape
            for family, exactness in strategy.guarantees().items():
                if exactness != "exact":
                    continue
                for element in family.test_elements():
                    elements = element.view(1, -1).expand(len(images), -1)
                    moved = net(family.apply(images, elements))
                    expected = family.apply(reference, elements) if dense else reference
                    assert relative_change(expected, moved) < 1e-5, (family, element, size)


@pytest.mark.parametrize("cls,kwargs", examples(ImageDataModule))
def test_data_module_builds_its_splits_or_says_where_the_files_go(
    cls: type, kwargs: dict[str, Any], tmp_path: Path
) -> None:
    """Each data module at its tiny settings: uint8 images and int64 labels of the size and
    channels it announced before setup (what the CLI links into the model); a module that reads
    files, pointed at an empty directory, refuses in one line that names where they go."""
    kwargs = dict(kwargs)
    reads_files = "root" in inspect.signature(cls).parameters and "root" not in kwargs
    if reads_files:
        kwargs["root"] = str(tmp_path / "absent")
    if reads_files:  # refused when built or, at the latest, when set up
        with pytest.raises(SymtrainError) as refused:
            cls(**kwargs).setup("fit")
        assert len(str(refused.value).splitlines()) == 1 and "absent" in str(refused.value)
        return
    data = cls(**kwargs)
    data.setup("fit")
    assert {"train", "val", "test"} <= set(data.splits)
    for split in data.splits.values():
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.images.shape[1:] == (data.in_channels, data.image_size, data.image_size)
        assert int(split.labels.max()) < data.num_classes
    assert len(data.mean) == len(data.std) == data.in_channels


def test_a_strategy_in_a_new_module_is_usable_by_its_short_name_without_an_import_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One file is the whole plugin: the package imports its new module itself, and the CLI
    then resolves the class by its short name."""
    import symtrain.symmetry
    from symtrain._lazy import import_submodules
    from symtrain.cli import main

    (tmp_path / "halfway.py").write_text(
        "from symtrain.symmetry.base import SymmetryStrategy\n\n\n"
        "class HalfwayStrategy(SymmetryStrategy):\n"
        '    """A strategy that does nothing, in a module of its own."""\n'
    )
    monkeypatch.setattr(symtrain.symmetry, "__path__", [*symtrain.symmetry.__path__, str(tmp_path)])
    try:
        import_submodules("symtrain.symmetry")
        quickstart = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
        with pytest.raises(SystemExit) as exit_:
            main(
                ["fit", "--config", str(quickstart), "--model.symmetry", "HalfwayStrategy", "--print_config"]
            )
        assert exit_.value.code in (0, None)
        assert "symtrain.symmetry.halfway.HalfwayStrategy" in capsys.readouterr().out
    finally:  # the module was only ever in this test's package path
        sys.modules.pop("symtrain.symmetry.halfway", None)
        vars(symtrain.symmetry).pop("halfway", None)
