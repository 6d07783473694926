"""Group averaging and learned canonicalization: the known answers (exact invariance and
equivariance for any backbone, at odd and even sizes, before and after training), the formulas
written out, and the whole path from the CLI (fit, summary, load_model, export, predict)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_cli import run_cli

import symtrain
from symtrain.backbones import AntialiasedCNN, StandardCNN
from symtrain.data import SyntheticShapes
from symtrain.errors import SymtrainError
from symtrain.module import Normalize, SegmentationNet, SymmetryNet
from symtrain.symmetry import Canonicalization, GroupAveraging
from symtrain.symmetry.canonicalization import CanonicalizedNet
from symtrain.transforms import CircularShift, Flip, Rot90, Rotation

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SIZES = [28, 29, 32, 33]


def classifier(backbone=None, classes: int = 5) -> SymmetryNet:
    torch.manual_seed(0)
    return SymmetryNet(Normalize([0.5], [0.5]), backbone or StandardCNN(1, width=8, depth=2), classes)


def segmenter(classes: int = 4) -> SegmentationNet:
    torch.manual_seed(0)
    return SegmentationNet(Normalize([0.5], [0.5]), StandardCNN(1, width=8, depth=2), classes)


def relative_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return ((after.double() - before.double()).norm() / before.double().norm()).item()


def turn(images: torch.Tensor, k: int = 1) -> torch.Tensor:
    return torch.rot90(images, k, dims=(-2, -1))


def images(size: int, count: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 1, size, size, generator=torch.Generator().manual_seed(seed))


# ---- group averaging --------------------------------------------------------------------------


def test_the_average_is_the_mean_over_the_orbit_written_out() -> None:
    inner = classifier().eval()
    x = images(17)
    d4 = [turn(x, k).flip(-1) if flip else turn(x, k) for flip in (0, 1) for k in range(4)]
    with torch.no_grad():
        logits = torch.stack([inner(view) for view in d4])
        averaged = GroupAveraging([Rot90(), Flip()]).wrap(inner).eval()(x)
        probabilities = GroupAveraging([Rot90(), Flip()], average="probabilities").wrap(inner).eval()(x)
    torch.testing.assert_close(averaged, logits.mean(0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(probabilities.softmax(1), logits.softmax(2).mean(0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(probabilities.exp().sum(1), torch.ones(len(x)))  # log-probabilities


@pytest.mark.parametrize("size", SIZES)
def test_averaging_over_c4_and_d4_makes_a_plain_cnn_exactly_invariant(size: int) -> None:
    x = images(size)
    c4 = GroupAveraging([Rot90()]).wrap(classifier()).eval()
    d4 = GroupAveraging([Rot90(), Flip()]).wrap(classifier()).eval()
    plain = classifier().eval()
    with torch.no_grad():
        assert relative_change(plain(x), plain(turn(x))) > 1e-3  # the CNN alone is not invariant
        for k in (1, 2, 3):
            assert relative_change(c4(x), c4(turn(x, k))) < 1e-5
        assert relative_change(c4(x), c4(x.flip(-1))) > 1e-3  # C4 says nothing about mirrors
        assert relative_change(d4(x), d4(x.flip(-1))) < 1e-5
        assert relative_change(d4(x), d4(turn(x).flip(-2))) < 1e-5


@pytest.mark.parametrize("size", [28, 33])
def test_averaging_makes_a_segmentation_unet_exactly_rot90_equivariant(size: int) -> None:
    net = GroupAveraging([Rot90()]).wrap(segmenter()).eval()
    x = images(size)
    with torch.no_grad():
        assert relative_change(turn(net(x)), net(turn(x))) < 1e-5
        plain = segmenter().eval()
        assert relative_change(turn(plain(x)), plain(turn(x))) > 1e-3


def test_circular_shifts_by_a_stride_give_invariance_to_the_shifts_they_cover_and_no_others() -> None:
    net = GroupAveraging([CircularShift(8, stride=8)]).wrap(classifier()).eval()
    x = images(32)
    with torch.no_grad():
        reference = net(x)
        assert relative_change(reference, net(torch.roll(x, (8, -16), dims=(-2, -1)))) < 1e-5
        assert relative_change(reference, net(torch.roll(x, (3, 0), dims=(-2, -1)))) > 1e-3
    with pytest.raises(SymtrainError, match="not a multiple of 8.*samples N"):
        GroupAveraging([CircularShift(8, stride=8)]).check(StandardCNN(1), image_size=28)


@pytest.mark.parametrize(
    "mode,averages_in_training,averages_in_evaluation",
    [("both", True, True), ("test", False, True), ("train", True, False)],
)
def test_the_mode_says_when_the_average_is_taken(
    mode: str, averages_in_training: bool, averages_in_evaluation: bool
) -> None:
    inner = classifier()
    net = GroupAveraging([Rot90()], mode=mode).wrap(inner)
    x = images(16)
    for training, averages in ((True, averages_in_training), (False, averages_in_evaluation)):
        net.train(training)
        with torch.no_grad():
            invariant = relative_change(net(x), net(turn(x))) < 1e-5
        assert invariant == averages, (mode, training)


def test_sampled_averaging_uses_a_fixed_set_in_evaluation_and_fresh_elements_in_training() -> None:
    with pytest.raises(SymtrainError, match="rotation has no finite orbit.*samples N"):
        GroupAveraging([Rotation()])
    inner = classifier().eval()
    net = GroupAveraging([Rotation()], samples=4).wrap(inner).eval()
    x = images(16)
    angles = Rotation().sample(4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = torch.stack(
            [inner(Rotation().apply(x, angle.expand(len(x), 1))) for angle in angles]
        ).mean(0)
        torch.testing.assert_close(net(x), expected, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(net(x), net(x))
        net.train()
        inner.eval()  # only the draw differs between the two passes, not batch statistics
        assert relative_change(net(x), net(x)) > 1e-4
    assert GroupAveraging([Rotation()], samples=4).guarantees() == {Rotation(): "approximate"}


# ---- any backbone ------------------------------------------------------------------------------


def backbone_examples() -> list:
    from test_contracts import examples

    from symtrain.backbones import Backbone

    return examples(Backbone)


@pytest.mark.parametrize("strategy", ["average", "canonicalize"])
@pytest.mark.parametrize("cls,kwargs", backbone_examples())
def test_every_backbone_becomes_exactly_rot90_invariant(strategy: str, cls: type, kwargs: dict) -> None:
    torch.manual_seed(0)
    wrapper = GroupAveraging([Rot90()]) if strategy == "average" else Canonicalization(width=4, depth=1)
    net = wrapper.wrap(classifier(cls(1, **kwargs))).eval()
    x = images(28, 2)
    with torch.no_grad():
        assert relative_change(net(x), net(turn(x))) < 1e-5


# ---- canonicalization ------------------------------------------------------------------------


def train_steps(net: torch.nn.Module, steps: int = 3, size: int = 20) -> None:
    """A few optimiser steps on random images with the task loss and the prior."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    net.train()
    for step in range(steps):
        x = images(size, 8, seed=100 + step)
        loss = F.cross_entropy(net(x), torch.arange(8) % 5) + net.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()


@pytest.mark.parametrize("backbone", [StandardCNN, AntialiasedCNN], ids=["cnn", "antialiased"])
def test_canonicalization_makes_any_backbone_exactly_invariant_before_and_after_training(backbone) -> None:
    net = Canonicalization(width=4, depth=2).wrap(classifier(backbone(1, width=8, depth=2))).eval()
    for trained in (False, True):
        if trained:
            train_steps(net)
        for size in SIZES:
            x = images(size, seed=size)
            with torch.no_grad():
                reference = net(x)
                for k in (1, 2, 3):
                    assert relative_change(reference, net(turn(x, k))) < 1e-5, (size, k, trained)


@pytest.mark.parametrize("size", [28, 29])
def test_d4_canonicalization_is_exactly_invariant_to_mirrors_and_c4_segmentation_equivariant(
    size: int,
) -> None:
    net = Canonicalization("D", 4, width=4, depth=2).wrap(classifier()).eval()
    x = images(size)
    with torch.no_grad():
        assert relative_change(net(x), net(x.flip(-1))) < 1e-5
        assert relative_change(net(x), net(turn(x, 3).flip(-2))) < 1e-5
    dense = Canonicalization(width=4, depth=2).wrap(segmenter()).eval()
    with torch.no_grad():
        assert relative_change(turn(dense(x)), dense(turn(x))) < 1e-5


def near_ties(size: int, seed: int = 0) -> torch.Tensor:
    """Images whose canonicalizer scores tie up to rounding, so that the last bits pick the
    pose: 16 images symmetric under D4 plus noise from 1e-7 to 1e-3, 2 exactly D4-symmetric,
    2 symmetric under half turns and 4 random ones."""
    base = images(size, 20, seed)
    orbit = [turn(base, k).flip(-1) if flip else turn(base, k) for flip in (0, 1) for k in range(4)]
    symmetric = torch.stack(orbit).amax(0)  # a maximum, unlike a sum, is the same in any order
    noise = torch.logspace(-7, -3, 16)[:, None, None, None] * (images(size, 16, seed + 1) - 0.5)
    half_turns = torch.maximum(base[16:18], turn(base[16:18], 2))
    return torch.cat([symmetric[:16] + noise, symmetric[18:], half_turns, images(size, 4, seed + 2)])


def poses(group: str) -> list:
    """The elements of C4 (D4) other than the identity, as maps of (B, C, H, W) images."""
    turns = [lambda x, k=k: turn(x, k) for k in (1, 2, 3)]
    mirrors = [lambda x: x.flip(-1), lambda x: x.flip(-2), lambda x: x.transpose(-2, -1)]
    mirrors += [lambda x: turn(x).flip(-1)]
    return turns + mirrors if group == "D" else turns


def read(net: CanonicalizedNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The net's outputs on x and the canonical image it chose for each input."""
    outputs = net(x)
    chosen = net.choices().tolist()
    return outputs, torch.cat([net.act_inverse(x[i : i + 1], net.poses[c]) for i, c in enumerate(chosen)])


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
@pytest.mark.parametrize("group", ["C", "D"])
def test_the_canonical_pose_and_the_logits_are_bitwise_invariant_on_near_ties(
    group: str, autocast: bool
) -> None:
    # Rounding differs between turns of an image (escnn's filters are equivariant to float32
    # precision only); where scores nearly tie it must not pick another canonical image.
    net = Canonicalization(group, 4, width=4, depth=2).wrap(classifier()).eval()
    x = near_ties(21)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, canonical = read(net, x)
        for index, move in enumerate(poses(group)):
            moved_logits, moved_canonical = read(net, move(x))
            other_image = (moved_canonical != canonical).flatten(1).any(1)
            assert not other_image.any(), f"pose {index}: inputs {other_image.nonzero().flatten().tolist()}"
            assert torch.equal(moved_logits, logits), f"pose {index}"


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_canonicalized_segmentation_is_bitwise_rot90_equivariant_on_near_ties(autocast: bool) -> None:
    net = Canonicalization(width=4, depth=2).wrap(segmenter()).eval()
    x = near_ties(20)
    # Not the inputs with a symmetry: their canonical image has no one way back for a network
    # that does not share it.
    x = x[[not any(torch.equal(turn(image, k), image) for k in (1, 2, 3)) for image in x]]
    assert len(x) == 20  # the 16 perturbed and 4 random images
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        reference = net(x)
        for k in (1, 2, 3):
            assert torch.equal(net(turn(x, k)), turn(reference, k)), k


def test_the_task_loss_trains_the_canonicalizer_through_the_straight_through_argmax() -> None:
    net = Canonicalization(width=4, depth=1, prior_weight=0.0).wrap(classifier()).train()
    assert net.penalty() is None
    F.cross_entropy(net(images(16)), torch.arange(4)).backward()
    gradients = [p.grad for p in net.canonicalizer.parameters()]
    assert all(g is not None for g in gradients) and sum(g.abs().sum() for g in gradients) > 0


def test_the_prior_is_the_cross_entropy_toward_the_identity_and_pulls_upright_images_to_it() -> None:
    net = Canonicalization(width=4, depth=1, prior_weight=0.5).wrap(classifier()).train()
    x = images(16, 8)
    net(x)
    scores = net.canonicalizer(x)
    expected = 0.5 * F.cross_entropy(scores, torch.zeros(8, dtype=torch.long)).float()
    torch.testing.assert_close(net.penalty(), expected)

    # "Upright": a bright band along the top of every image, on noise (no image is symmetric).
    upright = 0.3 * images(16, 64, seed=1)
    upright[..., :4, :] += 0.7
    optimizer = torch.optim.AdamW(net.canonicalizer.parameters(), lr=3e-2)
    for _ in range(40):
        net(upright)
        optimizer.zero_grad()
        net.penalty().backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        net(upright)
    assert (net.choices() == 0).float().mean() > 0.9  # upright images read as they are
    with torch.no_grad():
        net(turn(upright))
    assert (net.choices() == 1).float().mean() > 0.9  # and a quarter turn is recognised as one


def test_canonicalizer_settings_that_cannot_work_are_refused_in_one_line() -> None:
    for kwargs, message in (
        ({"group": "O"}, "choose C or D"),
        ({"kernel_size": 4}, "odd kernel_size"),
    ):
        with pytest.raises(SymtrainError, match=message) as error:
            Canonicalization(**kwargs)
        assert len(str(error.value).splitlines()) == 1
    with pytest.raises(SymtrainError, match="at least 128 pixels.*depth"):
        Canonicalization(depth=6).check(StandardCNN(1), image_size=32)


# ---- from the CLI ----------------------------------------------------------------------------

TINY = [
    "--data.num_train=64",
    "--data.num_val=32",
    "--data.num_test=32",
    "--data.batch_size=16",
    "--data.image_size=28",
    "--model.backbone.width=4",
    "--metrics.num_samples=16",
    "--metrics.test_num_samples=16",
    "--trainer.max_epochs=1",
    "--run.quiet=true",
]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code, _, err = run_cli(args, capsys)
    return code, err


@pytest.mark.slow
def test_a_canonicalized_run_logs_its_choices_reloads_with_its_wrapper_and_predicts_through_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "runs"
    base = [
        "--config",
        str(CONFIGS / "quickstart.yaml"),
        "--config",
        str(CONFIGS / "symmetry/canonicalize_c4.yaml"),
    ]
    code, err = run(["fit", *base, *TINY, f"--trainer.default_root_dir={root}"], capsys)
    assert code == 0, err
    (run_dir,) = [p for p in root.iterdir() if p.name != "wandb"]
    metrics = json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert metrics["test/equiv/rot90/invariance_error"] < 1e-5
    shares = [metrics[f"test/canonical/share/r{angle}"] for angle in (0, 90, 180, 270)]
    assert (
        math.isclose(sum(shares), 1.0, abs_tol=1e-6) and metrics["test/canonical/identity_share"] == shares[0]
    )
    assert metrics["train/canonical/prior_loss"] > 0
    assert not [key for key in metrics if "/layer/" in key]  # the layers are not the wrapped network's
    # the per-element histogram went to wandb (offline run files hold its key)
    (wandb_run,) = (root / "wandb").glob("offline-run-*")
    assert b"test/canonical/elements" in next(wandb_run.glob("*.wandb")).read_bytes()

    net = symtrain.load_model(run_dir)
    exported = symtrain.load_model(run_dir, export=True)
    assert isinstance(net, CanonicalizedNet) and isinstance(exported, CanonicalizedNet)
    x = images(28)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net(x), atol=1e-5, rtol=1e-5)
        assert relative_change(exported(x), exported(turn(x))) < 1e-5

    code, err = run(
        ["predict", *base, *TINY, f"--trainer.default_root_dir={root}", "--ckpt_path", str(run_dir)], capsys
    )
    assert code == 0, err
    (predicted,) = [p for p in root.iterdir() if (p / "predictions.pt").is_file()]
    predictions = torch.load(predicted / "predictions.pt")
    shapes = SyntheticShapes(num_train=64, num_val=32, num_test=32, image_size=28)
    shapes.setup()
    with torch.no_grad():
        expected = net(shapes.splits["test"].images.float() / 255)
    torch.testing.assert_close(predictions["logits"], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "task,config",
    [("classification", "average_test_c4.yaml"), ("segmentation", "canonicalize_c4.yaml")],
)
def test_wrapped_runs_measure_exact_symmetry_from_the_cli(
    task: str, config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = "segmentation_quickstart.yaml" if task == "segmentation" else "quickstart.yaml"
    args = ["fit", "--config", str(CONFIGS / start), "--config", str(CONFIGS / "symmetry" / config), *TINY]
    code, err = run([*args, "--run.wandb=false", f"--trainer.default_root_dir={tmp_path}"], capsys)
    assert code == 0, err
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    metrics = json.loads((run_dir / "summary.json").read_text())["metrics"]
    error = "equivariance_error" if task == "segmentation" else "invariance_error"
    assert metrics[f"test/equiv/rot90/{error}"] < 1e-5
    assert metrics[f"test/equiv/rotation/{error}"] > 1e-3  # other angles are not claimed


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            ["--config", "symmetry/average_rotation.yaml", "--model.symmetry.init_args.samples=null"],
            "samples N",
        ),
        (["--config", "symmetry/average_circular_shift.yaml"], "is no group on 28x28 images"),
        (
            ["--config", "symmetry/canonicalize_c4.yaml", "--model.symmetry.init_args.depth=6"],
            "at least 128 pixels",
        ),
    ],
)
def test_strategy_mistakes_end_in_one_line_and_exit_2(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = [str(CONFIGS / arg) if arg.endswith(".yaml") else arg for arg in extra]
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), *extra, *TINY, "--run.wandb=false"]
    code, err = run([*args, f"--trainer.default_root_dir={tmp_path}"], capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not [p for p in tmp_path.iterdir()] if tmp_path.exists() else True
