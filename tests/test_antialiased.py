"""Anti-aliased CNNs: APS is exactly invariant to circular shifts, BlurPool aliases less than max."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from symtrain import load_model
from symtrain.backbones import AntialiasedCNN, StandardCNN
from symtrain.backbones.antialiased import AdaptivePolyphaseSampling, DenseMaxPool
from symtrain.cli import SymtrainCLI
from symtrain.errors import SymtrainError
from symtrain.module import Normalize, SymmetryNet
from symtrain.transforms import CircularShift, Shift
from tests.test_cli import TINY as TINY_CLI_ARGS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = {"width": 4, "depth": 2, "convs_per_stage": 2}
SIZE = 16  # divisible by 2**depth: every circular shift is then a symmetry of the network


def tiny_net(seed: int = 0, **kwargs: object) -> SymmetryNet:
    torch.manual_seed(seed)
    return SymmetryNet(Normalize([0.5], [0.25]), AntialiasedCNN(1, **{**TINY, **kwargs}), num_classes=5)


def every_circular_shift(images: Tensor) -> Tensor:
    """(B, C, H, W) -> (H * W, B, C, H, W): the batch rolled by every (dy, dx)."""
    height, width = images.shape[-2:]
    return torch.stack(
        [torch.roll(images, (dy, dx), dims=(-2, -1)) for dy in range(height) for dx in range(width)]
    )


def pooled_features(net: SymmetryNet, images: Tensor) -> Tensor:
    return net.backbone(net.normalize(images)).mean(dim=(-2, -1))  # (B, C)


def train_a_few_steps(net: SymmetryNet, steps: int = 5) -> SymmetryNet:
    """Move the weights and batch-norm statistics away from their initial values."""
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        images = torch.rand(16, 1, SIZE, SIZE, generator=generator)
        labels = torch.randint(0, 5, (16,), generator=generator)
        loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def circular_shift_deviation(net: SymmetryNet, images: Tensor) -> tuple[float, bool]:
    """Largest change of the pooled features over every circular shift of the input (relative
    to their scale), and whether every shift keeps every prediction."""
    shifts = every_circular_shift(images)  # (S, B, C, H, W)
    with torch.no_grad():
        features = pooled_features(net, shifts.flatten(0, 1)).unflatten(0, shifts.shape[:2])  # (S, B, F)
        predictions = net(shifts.flatten(0, 1)).argmax(dim=1).unflatten(0, shifts.shape[:2])  # (S, B)
    deviation = (features - features[0]).abs().max() / features[0].abs().max()
    return deviation.item(), torch.equal(predictions, predictions[:1].expand_as(predictions))


def one_pixel_shift_error(backbone: AntialiasedCNN, images: Tensor) -> float:
    """Mean ||f(shift(x)) - f(x)|| / ||f(x)|| of pooled features over the four 1-pixel shifts."""
    with torch.no_grad():
        reference = backbone(images).mean(dim=(-2, -1))  # (B, C)
        errors = [
            (backbone(torch.roll(images, shift, dims=(-2, -1))).mean(dim=(-2, -1)) - reference).norm(dim=1)
            / reference.norm(dim=1)
            for shift in ((0, 1), (1, 0), (0, -1), (-1, 0))
        ]
    return torch.stack(errors).mean().item()


@pytest.mark.parametrize("circular", [True, False])
def test_dense_max_pool_gives_the_same_values_with_and_without_autograd(circular: bool) -> None:
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    with torch.no_grad():
        fast = DenseMaxPool(circular)(x)
    assert torch.equal(DenseMaxPool(circular)(x), fast)
    assert torch.equal(fast[..., :-1, :-1], F.max_pool2d(x, kernel_size=2, stride=1))


def test_aps_keeps_the_polyphase_component_of_largest_norm() -> None:
    x = torch.rand(8, 3, 6, 6, generator=torch.Generator().manual_seed(0)) ** 4  # (B, C, H, W)
    components = torch.stack([x[..., i::2, j::2] for i in (0, 1) for j in (0, 1)], dim=1)  # (B, 4, C, 3, 3)
    largest = components.flatten(2).norm(dim=2).argmax(dim=1)  # (B,)
    assert len(set(largest.tolist())) > 1  # the choice really varies per sample
    assert torch.equal(AdaptivePolyphaseSampling()(x), components[torch.arange(8), largest])


@pytest.mark.parametrize("filter_size", [1, 2, 3])
def test_aps_predictions_survive_every_circular_shift(filter_size: int) -> None:
    net = tiny_net(downsample="aps", filter_size=filter_size).eval()
    images = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    assert net.backbone.declared_symmetries()[CircularShift()] == "exact"
    for state in ("initial", "trained"):
        deviation, same_predictions = circular_shift_deviation(net, images)
        assert deviation < 1e-5 and same_predictions, state
        net = train_a_few_steps(net)


def test_aps_is_exact_at_the_quickstart_depth() -> None:
    net = tiny_net(downsample="aps", depth=3)
    net = train_a_few_steps(net)
    images = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))  # 32 = 4 * 2**3
    deviation, same_predictions = circular_shift_deviation(net, images)
    assert deviation < 1e-5 and same_predictions


@pytest.mark.parametrize("downsample", ["max", "blur"])
def test_the_invariance_check_catches_fixed_subsampling(downsample: str) -> None:
    # Circular padding alone does not make max-pooling or BlurPool invariant: strided sampling
    # at fixed positions still aliases, and the check above must see it.
    net = tiny_net(downsample=downsample, circular=True).eval()
    images = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    deviation, _ = circular_shift_deviation(net, images)
    assert deviation > 1e-3


def test_aps_without_circular_padding_declares_approximate_invariance() -> None:
    assert AntialiasedCNN(1, downsample="aps").declared_symmetries()[CircularShift()] == "exact"
    for kwargs in ({"circular": False}, {"padding_mode": "reflect"}):
        declared = AntialiasedCNN(1, downsample="aps", **kwargs).declared_symmetries()
        assert declared == {Shift(): "approximate", CircularShift(): "approximate"}, kwargs
    # Without a blur filter there is nothing for padding_mode to pad.
    unblurred = AntialiasedCNN(1, downsample="aps", filter_size=1, padding_mode="zeros")
    assert unblurred.declared_symmetries()[CircularShift()] == "exact"


@pytest.mark.parametrize("downsample", ["max", "blur", "aps"])
def test_a_shift_by_the_total_stride_moves_the_feature_map_by_one_cell(downsample: str) -> None:
    backbone = AntialiasedCNN(1, **TINY, downsample=downsample, circular=True).eval()
    images = torch.rand(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    stride = backbone.total_stride
    assert stride == 2 ** TINY["depth"]
    with torch.no_grad():
        features = backbone(images)  # (B, C, SIZE / stride, SIZE / stride)
        for cells in ((1, 0), (0, 1), (1, 3)):
            pixels = (cells[0] * stride, cells[1] * stride)
            moved = backbone(torch.roll(images, pixels, dims=(-2, -1)))
            assert torch.allclose(moved, torch.roll(features, cells, dims=(-2, -1)), atol=1e-6), cells


def test_blur_aliases_less_than_max_pooling_with_the_same_weights() -> None:
    torch.manual_seed(0)
    sizes = {"width": 4, "depth": 3, "convs_per_stage": 2}
    max_pooled = AntialiasedCNN(1, **sizes, downsample="max").eval()
    images = torch.rand(64, 1, 32, 32)
    errors = {"max": one_pixel_shift_error(max_pooled, images)}
    for filter_size in (3, 5, 7):
        blurred = AntialiasedCNN(1, **sizes, downsample="blur", filter_size=filter_size).eval()
        blurred.load_state_dict(max_pooled.state_dict())  # the same convolutions
        errors[f"blur{filter_size}"] = one_pixel_shift_error(blurred, images)
    # Measured: max 0.091, blur3 0.033, blur5 0.020, blur7 0.016; a stronger blur aliases less.
    assert errors["blur3"] < 0.6 * errors["max"], errors
    assert errors["blur7"] < errors["blur5"] < errors["blur3"], errors


def test_max_mode_is_standard_cnn() -> None:
    standard = StandardCNN(3, width=4, depth=2, convs_per_stage=2).eval()
    antialiased = AntialiasedCNN(3, width=4, depth=2, convs_per_stage=2, downsample="max").eval()
    antialiased.load_state_dict(standard.state_dict())  # strict: the same keys
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(antialiased(images), standard(images))
    assert antialiased.declared_symmetries() == standard.declared_symmetries()


def test_blur_with_a_one_tap_filter_is_max_pooling() -> None:
    # The dense max-pool and the strided filter keep max-pooling's sampling grid.
    maxpool = AntialiasedCNN(1, **TINY, downsample="max").eval()
    blur = AntialiasedCNN(1, **TINY, downsample="blur", filter_size=1).eval()
    blur.load_state_dict(maxpool.state_dict())
    images = torch.rand(2, 1, SIZE, SIZE)
    assert torch.equal(blur(images), maxpool(images))


def test_odd_sizes_still_give_a_feature_map() -> None:
    for downsample in ("max", "blur", "aps"):
        features = AntialiasedCNN(1, **TINY, downsample=downsample)(torch.rand(2, 1, 28, 27))
        assert features.shape[:2] == (2, 8) and features.shape[-1] >= 6, downsample


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"filter_size": 0}, "filter_size 0 is outside 1..7"),
        ({"filter_size": 8}, "filter_size 8 is outside 1..7"),
        ({"downsample": "avg"}, "downsample 'avg' is unknown"),
        ({"padding_mode": "edge"}, "padding_mode 'edge' is unknown"),
        ({"depth": 0}, "depth 0 must be at least 1"),
        ({"kernel_size": 4}, "kernel_size 4 must be odd"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SymtrainError, match=message) as caught:
        AntialiasedCNN(1, **kwargs)
    assert "\n" not in str(caught.value) and ": " in str(caught.value)


@pytest.mark.parametrize("config,mode", [("antialiased_blur.yaml", "blur"), ("antialiased_aps.yaml", "aps")])
def test_tiny_fit_of_each_config_and_a_checkpoint_round_trip(config: str, mode: str, tmp_path: Path) -> None:
    args = [
        "fit",
        *("--config", str(CONFIGS / "quickstart.yaml")),
        *("--config", str(CONFIGS / "backbone" / config)),
        *("--config", str(CONFIGS / "trainer" / "debug.yaml")),
        *TINY_CLI_ARGS,
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = SymtrainCLI(args=args)
    summary = json.loads((cli.run_dir / "summary.json").read_text())
    assert summary["backbone"] == f"AntialiasedCNN-{mode}"
    loaded = load_model(cli.run_dir)
    # the recorded accuracy is the reloaded best model's on the whole test split, recomputed here
    split = cli.datamodule.splits["test"]
    with torch.no_grad():
        accuracy = (loaded(split.images.float() / 255).argmax(1) == split.labels).float().mean().item()
    assert abs(summary["metrics"]["test/acc"] - accuracy) < 1e-6
    assert loaded.backbone.downsample == mode
    images = torch.rand(8, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(images), cli.model.net.eval()(images), atol=1e-6)
