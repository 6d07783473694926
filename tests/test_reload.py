"""Every trained model reloads at every image size it trained on.

For every shipped strategy config (found, not listed) at 28, 32 and 33 pixels on the shapes,
every shipped backbone config at 28 and 33, and on real digits at 28 and 33: ``fit``
(interrupted after its first epoch), then ``symtrain.load_model`` (plain and exported),
``test --ckpt_path best`` and a resumed ``fit --ckpt_path last``. Only learned state may
travel in a checkpoint: anything built per image size (kornia's augmentation pipelines) must
rebuild itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from backbone_configs import backbone_configs, tiny_args
from jsonargparse import ArgumentParser

import symtrain
from symtrain.backbones import StandardCNN
from symtrain.checkpoints import read_checkpoint
from symtrain.cli import main
from symtrain.errors import SymtrainError
from symtrain.module import SymmetryModule
from symtrain.symmetry import SymmetryStrategy

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
STRATEGIES = sorted((CONFIGS / "symmetry").glob("*.yaml"))
BACKBONES = backbone_configs()
SIZES = [28, 32, 33]
TINY = [
    "--data.batch_size=16",
    "--metrics.num_samples=8",
    "--metrics.test_num_samples=8",
    "--metrics.angle_step=90",
    "--metrics.max_shift=1",
    "--metrics.measures=[acc,invariance_error]",  # reloading is what is tested here, not the measures
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--run.wandb=false",
    "--run.quiet=true",
    "--run.test_after_fit=false",
]
# Training ends cleanly after the first of two epochs, as an interruption would leave it.
INTERRUPTED = (
    '--trainer.callbacks+={"class_path": "recovery_callbacks.StopAfter", "init_args": {"epochs": 1}}'
)


def backbone_for(strategy: Path) -> Path:
    """A backbone the strategy accepts: Architectural needs one built for rot90."""
    return CONFIGS / "backbone" / ("escnn_c4.yaml" if "Architectural" in strategy.read_text() else "cnn.yaml")


NONE = CONFIGS / "symmetry" / "none.yaml"


def sizes_for(strategy: Path) -> list[int]:
    """The sizes of SIZES the strategy trains at: those its own check does not refuse as sizes
    (averaging over circular shifts by a stride needs a side that is a multiple of it; the CLI
    refuses the others in one line, tested in test_strategies)."""
    parser = ArgumentParser()
    parser.add_subclass_arguments(SymmetryStrategy, "symmetry")
    config = parser.parse_object({"symmetry": yaml.safe_load(strategy.read_text())["model"]["symmetry"]})
    built = parser.instantiate(config).symmetry
    accepted = []
    for size in SIZES:
        try:
            built.check(StandardCNN(1), image_size=size)
        except SymtrainError as error:
            if "data.image_size" in str(error):
                continue
        accepted.append(size)
    return accepted


def runs_under(root: Path) -> list[Path]:
    return sorted(path for path in root.iterdir() if (path / "config.yaml").is_file())


SHAPES = ["--data.num_train=32", "--data.num_val=16", "--data.num_test=16"]
DIGITS = ["--config", str(CONFIGS / "data" / "mnist5k.yaml"), f"--data.root={ROOT / 'data'}"]
CELLS = [
    *(
        pytest.param(SHAPES, backbone_for(strategy), strategy, size, id=f"shapes-{strategy.stem}-{size}")
        for strategy in STRATEGIES
        for size in sizes_for(strategy)
    ),
    *(
        pytest.param(SHAPES, backbone, NONE, size, id=f"shapes-{backbone.stem}-{size}")
        for backbone in BACKBONES
        if backbone.stem != "cnn"  # the strategies' cells train it
        for size in (28, 33)  # test_cli trains each at 32
    ),
    *(
        pytest.param(DIGITS, backbone_for(strategy), strategy, size, id=f"digits-{strategy.stem}-{size}")
        for strategy in (
            NONE,
            CONFIGS / "symmetry" / "augment_rotation.yaml",
            CONFIGS / "symmetry" / "architectural.yaml",
            CONFIGS / "symmetry" / "canonicalize_c4.yaml",  # a learned escnn canonicalizer
        )
        for size in (28, 33)
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("data,backbone,strategy,size", CELLS)
def test_every_backbone_and_strategy_reloads_at_every_image_size(
    data: list[str], backbone: Path, strategy: Path, size: int, tmp_path: Path
) -> None:
    configs = ["--config", str(CONFIGS / "quickstart.yaml"), "--config", str(backbone), *tiny_args(backbone)]
    configs += ["--config", str(strategy), *data, *TINY, f"--data.image_size={size}"]
    configs += [f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=2"]
    main(["fit", *configs, INTERRUPTED])
    (run_dir,) = runs_under(tmp_path)
    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    state = checkpoint["state_dict"]
    assert SymmetryModule.without_stale_state(state).keys() == state.keys()  # nothing stale is written
    assert not [key for key in state if key.startswith("symmetry.")]  # no strategy here learns anything

    images = torch.rand(3, 1, size, size, generator=torch.Generator().manual_seed(0))
    net = symtrain.load_model(run_dir)
    logits = net(images)
    assert logits.shape[0] == 3 and logits.isfinite().all()
    exported = symtrain.load_model(run_dir, export=True)
    torch.testing.assert_close(exported(images), logits, atol=1e-4, rtol=1e-4)

    main(["test", *configs, "--ckpt_path", "best"])
    (tested,) = [path for path in runs_under(tmp_path) if path != run_dir]
    assert "test/acc" in json.loads((tested / "summary.json").read_text())["metrics"]

    main(["fit", *configs, "--ckpt_path", "last"])
    assert runs_under(tmp_path) == sorted([run_dir, tested])  # resumed in the same run directory
    resumed = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert (checkpoint["epoch"], resumed["epoch"]) == (0, 1)


@pytest.mark.slow
def test_checkpoints_holding_augmentation_pipelines_still_load_test_and_resume(tmp_path: Path) -> None:
    """Checkpoints written while kornia's pipelines were part of the module (one entry per image
    size seen) load, test (with the metrics' settings of then, ``layerwise``) and resume; a resume
    that changes the one-cycle schedule is refused."""
    strategy = CONFIGS / "symmetry" / "augment_rotation.yaml"
    configs = ["--config", str(CONFIGS / "quickstart.yaml"), "--config", str(strategy), *SHAPES, *TINY]
    configs += ["--model.backbone.width=4"]
    configs += ["--data.image_size=28", f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=2"]
    main(["fit", *configs, INTERRUPTED])
    (run_dir,) = runs_under(tmp_path)
    for name in ("best", "last"):
        path = run_dir / "checkpoints" / f"{name}.ckpt"
        checkpoint = read_checkpoint(path)
        checkpoint["state_dict"]["symmetry.pipelines.28x28.RandomRotation_0._param_generator.degrees"] = (
            torch.tensor([-180.0, 180.0])
        )
        torch.save(checkpoint, path)
    assert symtrain.load_model(run_dir)(torch.rand(2, 1, 28, 28)).shape == (2, 8)
    main(["test", *configs, "--metrics.layerwise=true", "--ckpt_path", "best"])  # as configs said then
    config = (run_dir / "config.yaml").read_text()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *configs, "--trainer.max_epochs=3", "--ckpt_path", "last"])
    assert exit_.value.code == 2
    assert (run_dir / "config.yaml").read_text() == config  # the refused resume changed nothing
    main(["fit", *configs, "--ckpt_path", "last"])
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 1
