"""escnn backbones: invariance by construction, exactly, at the sizes users have."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
import yaml

from symtrain.backbones import EquivariantCNN, StandardCNN
from symtrain.errors import SymtrainError
from symtrain.module import Normalize, SymmetryModule, SymmetryNet
from symtrain.symmetry import Architectural
from symtrain.transforms import Flip, Rot90, declared_exactness

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "backbone").glob("escnn_*.yaml"))


def tiny(config: Path) -> partial[EquivariantCNN]:
    """The config's backbone at a test size: same group and options, fewer channels and stages."""
    init_args = yaml.safe_load(config.read_text())["model"]["backbone"]["init_args"]
    return partial(EquivariantCNN, **{**init_args, "width": 8, "depth": 2, "convs_per_stage": 1})


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


def transformed_logits(net: SymmetryNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {
            "identity": net(x),
            "rot90": net(torch.rot90(x, 1, dims=(-2, -1))),
            "rot270": net(torch.rot90(x, 3, dims=(-2, -1))),
            "flip": net(x.flip(-1)),
            "vflip": net(x.flip(-2)),
        }


def exact_families(backbone: EquivariantCNN) -> list[str]:
    declared = backbone.declared_symmetries()
    names = ["rot90", "rot270"] if declared_exactness(declared, Rot90()) == "exact" else []
    names += ["flip"] if declared_exactness(declared, Flip("horizontal")) == "exact" else []
    return names + (["vflip"] if declared_exactness(declared, Flip("vertical")) == "exact" else [])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("size", [28, 29, 32, 33])
def test_logits_are_invariant_with_random_weights(config: Path, size: int) -> None:
    torch.manual_seed(0)
    net = SymmetryNet(Normalize([0.5], [0.5]), tiny(config)(1), num_classes=5).eval()
    logits = transformed_logits(net, torch.rand(4, 1, size, size))
    families = exact_families(net.backbone)
    assert "rot90" in families
    for name in families:
        assert relative_error(logits["identity"], logits[name]) < 1e-4, name


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_logits_stay_invariant_after_training_steps(config: Path) -> None:
    """Invariance is a property of the architecture, not of the initial weights."""
    torch.manual_seed(1)
    net = SymmetryNet(Normalize([0.5], [0.5]), tiny(config)(1), num_classes=3)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(3):
        x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 3, (8,))
        loss = torch.nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    logits = transformed_logits(net, torch.rand(4, 1, 28, 28))
    for name in exact_families(net.backbone):
        assert relative_error(logits["identity"], logits[name]) < 1e-4, name


def test_a_plain_cnn_is_not_invariant_so_the_check_can_fail() -> None:
    torch.manual_seed(0)
    net = SymmetryNet(Normalize([0.5], [0.5]), StandardCNN(1, width=8, depth=2), num_classes=5).eval()
    logits = transformed_logits(net, torch.rand(4, 1, 28, 28))
    assert relative_error(logits["identity"], logits["rot90"]) > 1e-2


def test_c4_distinguishes_mirror_images_and_d4_does_not() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 1, 29, 29)
    c4 = SymmetryNet(Normalize([0.5], [0.5]), EquivariantCNN(1, "C", 4, width=8, depth=2), 5).eval()
    d4 = SymmetryNet(Normalize([0.5], [0.5]), EquivariantCNN(1, "D", 4, width=8, depth=2), 5).eval()
    assert relative_error(c4(x), c4(x.flip(-1))) > 1e-3
    assert relative_error(d4(x), d4(x.flip(-1))) < 1e-4


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_export_gives_identical_outputs_without_escnn(config: Path) -> None:
    torch.manual_seed(0)
    backbone = tiny(config)(1)
    backbone(torch.rand(8, 1, 32, 32))  # one training-mode pass moves the batch-norm statistics
    backbone.eval()
    exported = backbone.export()
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(exported(x), backbone(x), atol=1e-5)
    assert not [m for m in exported.modules() if type(m).__module__.startswith("escnn")]
    assert backbone.training is False  # exporting leaves the model as it was


@pytest.mark.parametrize("save_mode,load_mode", [("eval", "train"), ("train", "eval"), ("eval", "eval")])
def test_checkpoints_load_whatever_mode_they_were_saved_in(save_mode: str, load_mode: str) -> None:
    torch.manual_seed(0)
    source = EquivariantCNN(1, "C", 4, width=8, depth=2)
    source(torch.rand(8, 1, 28, 28))
    getattr(source, save_mode)()
    state = source.state_dict()
    assert not any(key.endswith((".filter", ".expanded_bias")) for key in state)
    target = getattr(EquivariantCNN(1, "C", 4, width=8, depth=2), load_mode)()
    target.load_state_dict(state)  # strict
    source.eval()
    target.eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(source(x), target(x), atol=1e-6)


def test_loading_into_an_eval_model_refreshes_the_filter_cache() -> None:
    torch.manual_seed(0)
    trained = EquivariantCNN(1, "C", 4, width=8, depth=2).eval()
    stale = EquivariantCNN(1, "C", 4, width=8, depth=2).eval()  # caches its own random filters
    stale.load_state_dict(trained.state_dict())
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(stale(x), trained(x), atol=1e-6)


def test_declarations_drive_the_architectural_strategy() -> None:
    c4 = partial(EquivariantCNN, group="C", order=4, width=8, depth=2)
    d4 = partial(EquivariantCNN, group="D", order=4, width=8, depth=2)
    SymmetryModule(c4, symmetry=Architectural([Rot90()]))
    SymmetryModule(d4, symmetry=Architectural([Rot90(), Flip()]))
    with pytest.raises(SymtrainError, match="does not declare exact flip"):
        SymmetryModule(c4, symmetry=Architectural([Flip()]))
    restricted = partial(EquivariantCNN, group="D", order=4, width=8, depth=2, restrict_from_stage=1)
    with pytest.raises(SymtrainError, match="does not declare exact flip"):
        SymmetryModule(restricted, symmetry=Architectural([Flip()]))
    c6 = EquivariantCNN(1, "C", 6, width=8, depth=1)
    assert declared_exactness(c6.declared_symmetries(), Rot90()) is None


@pytest.mark.parametrize("kwargs", [{"group": "O2", "grid_size": 6}, {"group": "D", "order": 3}])
def test_without_a_half_turn_only_the_groups_own_mirror_is_exact(kwargs: dict) -> None:
    """An O(2) grid of 6 samples holds 3 rotations, D3 as many: no half turn, so the vertical
    flip (the horizontal one composed with it) is not in the group, and measures so."""
    torch.manual_seed(0)
    backbone = EquivariantCNN(1, width=4, depth=2, **kwargs).eval()
    declared = backbone.declared_symmetries()
    assert declared_exactness(declared, Flip("horizontal")) == "exact"
    assert declared_exactness(declared, Flip("vertical")) is None
    images = torch.rand(4, 1, 29, 29, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pooled = {axis: backbone(images.flip(axis)).mean((-2, -1)) for axis in (-1, -2)}
        reference = backbone(images).mean((-2, -1))
    assert relative_error(reference, pooled[-1]) < 1e-5
    assert relative_error(reference, pooled[-2]) > 1e-3


def test_restricted_model_keeps_rotations_and_loses_reflections() -> None:
    torch.manual_seed(0)
    backbone = EquivariantCNN(1, "D", 4, width=8, depth=2, restrict_from_stage=1)
    net = SymmetryNet(Normalize([0.5], [0.5]), backbone, 5).eval()
    logits = transformed_logits(net, torch.rand(4, 1, 28, 28))
    assert relative_error(logits["identity"], logits["rot90"]) < 1e-4
    assert relative_error(logits["identity"], logits["flip"]) > 1e-3
    assert backbone.name == "EquivariantCNN-D4_C4"


def test_width_rules() -> None:
    by_channels = EquivariantCNN(1, "C", 4, width=16, depth=2, width_rule="channels")
    by_params = EquivariantCNN(1, "C", 4, width=16, depth=2, width_rule="params")
    assert by_channels.layers[0].out_type.size == 16  # 4 regular C4 fields of 4 channels: like StandardCNN
    assert by_params.layers[0].out_type.size == 32  # 16 / sqrt(4) = 8 fields
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(by_params) > 2 * count(by_channels)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"group": "C", "order": 0}, "N >= 1"),
        ({"kernel_size": 4}, "must be odd"),
        ({"group": "C", "restrict_from_stage": 1}, "needs a D_N .N >= 2. or O2 group"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(SymtrainError, match=message):
        EquivariantCNN(1, **{"width": 8, "depth": 2, **kwargs})


def test_escnn_c4_trains_on_mnist_from_the_cli_and_stays_invariant_at_28(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MNIST's native 28x28 images, as given (tiny fake idx files in torchvision's layout)."""
    from symtrain import load_model
    from symtrain.cli import main
    from tests.test_data import write_fake_mnist

    write_fake_mnist(tmp_path / "data", num_train=64, num_test=32)
    root = Path(__file__).resolve().parents[1] / "configs"
    main(
        ["fit", "--config", str(root / "quickstart.yaml"), "--config", str(root / "data" / "mnist.yaml")]
        + [
            "--config",
            str(root / "backbone" / "escnn_c4.yaml"),
            "--config",
            str(root / "trainer" / "debug.yaml"),
        ]
        + ["--config", str(root / "symmetry" / "architectural.yaml"), f"--data.root={tmp_path / 'data'}"]
        + [
            "--model.backbone.width=8",
            "--model.backbone.depth=2",
            "--data.batch_size=16",
            "--run.wandb=false",
        ]
        + ["--run.quiet=true", f"--trainer.default_root_dir={tmp_path / 'runs'}", "--run.name=mnist"]
    )
    net = load_model(tmp_path / "runs" / "mnist")
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert relative_error(net(x), net(torch.rot90(x, 1, dims=(-2, -1)))) < 1e-4


def test_sync_batchnorm_reaches_escnn_inner_batch_norm_but_not_iid() -> None:
    regular = torch.nn.SyncBatchNorm.convert_sync_batchnorm(EquivariantCNN(1, "C", 4, width=8, depth=2))
    fourier = torch.nn.SyncBatchNorm.convert_sync_batchnorm(EquivariantCNN(1, "SO2", width=8, depth=2))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in regular.modules())
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in fourier.modules())
    # the backbone names what the conversion cannot reach (the module warns about it under DDP)
    unsyncable = EquivariantCNN(1, "SO2", width=8, depth=2).unsyncable_norms()
    assert any(isinstance(m, unsyncable) for m in fourier.modules())
    assert not any(isinstance(m, unsyncable) for m in regular.modules())
    assert StandardCNN(1).unsyncable_norms() == ()


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")  # escnn's own np.matrix
def test_escnn_solves_kernel_bases_exactly_even_where_scikit_learn_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """escnn takes scikit-learn's randomized SVD whenever it can import it, and recent
    scikit-learn refuses escnn's np.matrix: building a model switches escnn to scipy's SVD."""
    import numpy as np
    from escnn.group import _numerical

    def refuses_matrices(matrix: object, *args: object, **kwargs: object) -> None:
        raise TypeError("np.matrix is not supported. Please convert to a numpy array with np.asarray.")

    monkeypatch.setattr(_numerical, "randomized_svd", refuses_matrices)
    EquivariantCNN(in_channels=1, group="D", order=4, width=4, depth=1)
    assert _numerical.randomized_svd is None
    null_space = _numerical.null(np.matrix([[1.0, 1.0], [1.0, 1.0]]), use_sparse=False)  # as escnn calls it
    np.testing.assert_allclose(np.abs(null_space[:, 0]), [2**-0.5, 2**-0.5])
