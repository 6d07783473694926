"""The ResNet family on timm's blocks: where each anti-aliasing form subsamples, and the APS
form's exact claim (every circular shift, at sides that are multiples of the total stride)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_cli import run_cli
from timm.layers import BlurPool2d
from torch import nn

from symtrain.backbones import ResNet
from symtrain.backbones.resnet import PolyphaseDown, SamePhaseDown
from symtrain.errors import SymtrainError
from symtrain.transforms import CircularShift

ROOT = Path(__file__).resolve().parents[1]


def pooled_change_under_shifts(net: nn.Module, size: int, shifts: list[tuple[int, int]]) -> float:
    """Largest relative change of the pooled features over ``shifts``, in float64."""
    net = net.double().eval()
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        reference = net(images).mean((-2, -1))
        rolled = torch.cat([torch.roll(images, shift, dims=(-2, -1)) for shift in shifts])
        moved = net(rolled).mean((-2, -1)).view(len(shifts), *reference.shape)
    return ((moved - reference).flatten(2).norm(dim=-1) / reference.norm(dim=-1)).max().item()


EVERY_OFFSET = [(dy, dx) for dy in range(8) for dx in range(8)] + [(13, -21), (-30, 17)]


@pytest.mark.parametrize("depth,stem,size", [(18, "cifar", 32), (18, "cifar", 40), (50, "imagenet", 64)])
def test_aps_resnet_is_exactly_invariant_to_every_circular_shift(depth: int, stem: str, size: int) -> None:
    """Chaman & Dokmanic's claim: with circular padding, every shift, not only multiples of
    the total stride (each offset within a cell, and some that wrap)."""
    torch.manual_seed(0)
    net = ResNet(3, depth=depth, stem=stem, downsample="aps", width=4)
    assert net.declared_symmetries()[CircularShift()] == "exact"
    assert size % net.total_stride == 0
    offsets = EVERY_OFFSET if stem == "cifar" else [(1, 0), (0, 1), (5, 3), (31, -17)]
    assert pooled_change_under_shifts(net, size, offsets) < 1e-12


@pytest.mark.parametrize("filter_size", [2, 4, 6])
def test_even_blur_filters_keep_the_declared_sizes_and_the_exact_claim(filter_size: int) -> None:
    """4 taps is the default of the antialiased-cnns and APS code: each stage halves the map
    as ``feature_info`` says (16/8/4 at 32, not 17/9/5), and APS stays exact under a roll."""
    torch.manual_seed(0)
    for downsample in ("blur", "aps"):
        net = ResNet(3, downsample=downsample, width=4, filter_size=filter_size).eval()
        with torch.no_grad():
            maps = net.layer_outputs(torch.rand(1, 3, 32, 32))
        assert [m.shape[-1] for m in maps.values()] == [32 // f.stride for f in net.feature_info()]
    assert pooled_change_under_shifts(net, 32, [(3, 5), (1, 0)]) < 1e-12


@pytest.mark.parametrize(
    "kwargs", [{"downsample": "max"}, {"downsample": "blur"}, {"downsample": "aps", "circular": False}]
)
def test_other_forms_change_under_shifts_and_say_so(kwargs: dict) -> None:
    torch.manual_seed(0)
    net = ResNet(3, width=4, **kwargs)
    assert net.declared_symmetries()[CircularShift()] == "approximate"
    assert pooled_change_under_shifts(net, 32, [(1, 0), (3, 5)]) > 1e-3


def test_the_shortcut_keeps_the_main_paths_component() -> None:
    """Remove the sharing (the shortcut choosing its own component) and the claim fails: the
    two branches would move differently under a shift."""
    torch.manual_seed(0)
    net = ResNet(3, width=4, downsample="aps")
    shared = [m for m in net.modules() if isinstance(m, SamePhaseDown)]
    assert len(shared) == 3 and all(isinstance(m.leader, PolyphaseDown) for m in shared)
    for module in shared:  # each shortcut now picks by its own norm
        module.forward = lambda x, blur=module.blur: PolyphaseDown(stride=2, filt_size=1)(blur(x))
    assert pooled_change_under_shifts(net, 32, EVERY_OFFSET[:16]) > 1e-6


@pytest.mark.parametrize("downsample", ["blur", "aps"])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_anti_aliased_forms_never_subsample_without_a_filter_first(downsample: str, stem: str) -> None:
    """Zhang's placement: every convolution at stride 1, every subsampling a blur (timm's
    BlurPool2d) after the nonlinearity, on the shortcut too; APS blurs at stride 1 first."""
    net = ResNet(3, depth=18, stem=stem, downsample=downsample, width=4)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if downsample == "blur" and stem == "imagenet":
        convs = convs[1:]  # Zhang keeps the 7x7 stem convolution strided (pool_only)
    assert all(conv.stride == (1, 1) for conv in convs)
    blurs = [m for m in net.modules() if isinstance(m, BlurPool2d)]
    downsamplings = 3 + (2 if stem == "imagenet" and downsample == "aps" else int(stem == "imagenet"))
    shortcuts = 3
    assert len(blurs) == downsamplings + shortcuts
    if downsample == "blur":
        assert all(blur.stride == 2 for blur in blurs)
        for stage in net.stages.values():
            block = stage[0]
            if block.downsample is not None:  # blur-pool, then the 1x1 convolution
                assert isinstance(block.downsample[0], BlurPool2d) and isinstance(block.aa, BlurPool2d)


def test_the_max_form_is_timms_resnet18() -> None:
    """Same blocks as timm's resnet18 (the ImageNet stem aside from its fixed 64 channels)."""
    import timm

    ours = ResNet(3, depth=18, stem="imagenet", downsample="max", width=64)
    theirs = timm.create_model("resnet18", num_classes=0)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert ours.feature_info()[-1].stride == 32 and ours.out_channels == 512


def test_bottleneck_depth_widens_by_four() -> None:
    net = ResNet(1, depth=50, width=4)
    assert net.out_channels == 4 * 8 * 4
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 128, 4, 4)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"depth": 20}, "not one of [18, 34, 50]"),
        ({"stem": "tiny"}, "stem 'tiny' is unknown"),
        ({"downsample": "avg"}, "downsample 'avg' is unknown"),
        ({"downsample": "blur", "filter_size": 1}, "is not a blur"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(SymtrainError, match=message.replace("[", r"\[").replace("]", r"\]")) as error:
        ResNet(1, **kwargs)
    assert len(str(error.value).splitlines()) == 1


def test_aps_at_a_size_breaking_its_exact_claim_exits_2_in_one_line(tmp_path: Path, capsys) -> None:
    args = ["fit", "--config", str(ROOT / "configs" / "quickstart.yaml")]
    args += ["--config", str(ROOT / "configs" / "backbone" / "resnet18_aps.yaml"), "--model.backbone.width=4"]
    args += ["--model.symmetry=Architectural", "--model.symmetry.families=[CircularShift]"]
    args += ["--data.image_size=28", "--run.wandb=false", f"--trainer.default_root_dir={tmp_path}"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "multiple of its total stride 8, not 28" in err and "--data.image_size 24" in err
    assert len(err.strip().splitlines()) == 1 and not any(tmp_path.iterdir())
