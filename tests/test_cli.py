"""The CLI: every config parses and trains (or refuses clearly), runs are complete and reloadable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from backbone_configs import backbone_configs, tiny_args, without_backbone_flags

from symtrain import load_model
from symtrain.__main__ import main
from symtrain.report.figures import _test_images

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
QUICKSTART = str(CONFIGS / "quickstart.yaml")
DEBUG = str(CONFIGS / "trainer" / "debug.yaml")
# A tiny version of the quickstart: few images, a narrow net, no wandb unless a test wants it.
TINY = [
    "--data.num_train=256",
    "--data.num_val=64",
    "--data.num_test=64",
    "--data.batch_size=32",
    "--model.backbone.width=4",
    "--run.wandb=false",
    "--run.quiet=true",
]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def only_run_dir(root: Path) -> Path:
    runs = [p for p in root.iterdir() if p.is_dir() and p.name != "wandb"]
    assert len(runs) == 1, runs
    return runs[0]


def all_configs() -> list[Path]:
    # compare/ and papers/ hold studies (matrices of these configs), checked in test_compare.py
    # and test_papers.py; measure/ holds measure configs, checked in test_measure.py.
    studies = ("compare", "papers", "measure")
    return sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in studies)


@pytest.mark.parametrize("config", all_configs(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_parses_on_top_of_the_quickstart(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        ["fit", "--config", QUICKSTART, "--config", str(config), "--print_config"], capsys
    )
    assert code == 0, err
    printed = yaml.safe_load(out)
    stacked = yaml.safe_load(config.read_text())
    for section, values in stacked.items():  # the stacked file wins over the quickstart
        if isinstance(values, dict) and "class_path" in values:
            assert printed[section]["class_path"].endswith("." + values["class_path"])
        elif section == "trainer":
            for key, value in values.items():
                if key.endswith("+"):  # appended to a list: its entries end the printed one
                    appended = printed["trainer"][key[:-1]][-len(value) :]
                    assert [c["class_path"] for c in appended] == [c["class_path"] for c in value]
                else:
                    assert printed["trainer"][key] == value
        elif section == "model":  # plain settings and injected classes (configs/optim/)
            for key, value in values.items():
                if isinstance(value, dict) and "class_path" in value:
                    path = printed["model"][key]["class_path"]
                    assert path == value["class_path"] or path.endswith("." + value["class_path"])
                elif not isinstance(value, dict):
                    assert printed["model"][key] == value


# (stacked configs, expected exit code, text the one-line error must contain)
COMBINATIONS = [
    (["symmetry/none.yaml"], 0, None),
    (["backbone/cnn.yaml"], 0, None),
    (["symmetry/augment_rotation.yaml"], 0, None),
    (["symmetry/augment_shift.yaml"], 0, None),
    (["symmetry/augment_flip.yaml"], 0, None),
    (["symmetry/augment_affine.yaml"], 0, None),
    (["symmetry/augment_elastic.yaml"], 0, None),
    (["symmetry/augment_diffeo.yaml"], 0, None),
    (["data/shapes.yaml", "trainer/cpu.yaml"], 0, None),
    (["symmetry/architectural.yaml"], 2, "StandardCNN does not declare exact rot90 invariance"),
    (["data/mnist.yaml"], 2, "--data.download true"),
    (["data/rotated_mnist.yaml"], 2, "--data.download true"),
    (["data/cifar10.yaml"], 2, "--data.download true"),
]


@pytest.mark.parametrize(
    "stack,code,message", COMBINATIONS, ids=lambda v: "+".join(v) if isinstance(v, list) else None
)
def test_tiny_fit_of_each_combination(
    stack: list[str], code: int, message: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = [arg for name in stack for arg in ("--config", str(CONFIGS / name))]
    args = ["fit", "--config", QUICKSTART, *configs, "--config", DEBUG, *TINY]
    if any(name.startswith("data/") and name != "data/shapes.yaml" for name in stack):
        args = [a for a in args if not a.startswith("--data.num_")]
        args += [f"--data.root={tmp_path / 'data'}"]
    args += [f"--trainer.default_root_dir={tmp_path / 'runs'}"]
    got, _, err = run_cli(args, capsys)
    assert got == code, err
    if code == 0:
        run_dir = only_run_dir(tmp_path / "runs")
        summary = json.loads((run_dir / "summary.json").read_text())
        # the recorded accuracy is the reloaded best model's on the test split, recomputed here
        images, labels, _ = _test_images(run_dir, 64)
        with torch.no_grad():
            accuracy = (load_model(run_dir)(images).argmax(1) == labels).float().mean().item()
        assert abs(summary["metrics"]["test/acc"] - accuracy) < 1e-6
    else:
        assert message in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_folder_config_trains_on_a_users_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 12), ("test", 4)):
        for label in ("cats", "dogs"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = (torch.rand(16, 16, generator=generator) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    args = ["fit", "--config", QUICKSTART, "--config", str(CONFIGS / "data/folder.yaml"), "--config", DEBUG]
    args += [a for a in TINY if not a.startswith("--data.num_")]
    args += [f"--data.root={tmp_path / 'images'}", f"--trainer.default_root_dir={tmp_path / 'runs'}"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    summary = json.loads((only_run_dir(tmp_path / "runs") / "summary.json").read_text())
    assert summary["dataset"] == "folder"


def test_data_facts_are_linked_into_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from symtrain.cli import SymtrainCLI

    cli = SymtrainCLI(args=["--config", QUICKSTART, "--data.classes=[L, J, S]", *TINY], run=False)
    assert cli.model.hparams.num_classes == 3 == cli.datamodule.num_classes
    assert cli.model.net.head.fc.out_features == 3
    assert tuple(cli.model.hparams.mean) == tuple(cli.datamodule.mean)


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path: Path) -> None:
    """The real command in a subprocess, with wandb offline: a complete, reloadable run."""
    root = tmp_path / "runs"
    command = [
        sys.executable, "-m", "symtrain", "fit", "--config", QUICKSTART,
        "--trainer.max_epochs=2", f"--trainer.default_root_dir={root}",
        "--data.num_train=512", "--data.num_val=128", "--data.num_test=128",
        "--metrics.test_num_samples=64", "--run.quiet=true",
    ]  # fmt: skip
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for _ in range(2):  # a second identical run must not clobber the first
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "wandb")
    assert len(runs) == 2
    run = runs[0]
    for name in (
        "config.yaml",
        "metrics.csv",
        "summary.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    ):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["backbone"] == "StandardCNN" and summary["strategy"] == "NoSymmetry"
    assert summary["dataset"] == "shapes" and summary["seed"] == 0 and summary["params"] > 0
    assert {"val/acc", "val/loss", "test/acc", "test/loss"} <= set(summary["metrics"])
    # every run measures its invariance: in summary.json, the CSV log and wandb alike
    families = ("rot90", "flip", "circular_shift", "shift", "rotation")
    measures = ("invariance_error", "consistency", "acc")
    equiv = {f"test/equiv/{family}/{measure}" for family in families for measure in measures}
    assert equiv <= set(summary["metrics"])
    assert {"test/equiv/rot90/layer/stage1", "test/equiv/rotation/round_trip_error"} <= set(
        summary["metrics"]
    )
    assert [m["key"] for m in summary["measures"]][:2] == ["acc", "invariance_error"]  # what the report reads
    assert len(summary["curves"]["test/rotation"]["angle"]) == 24
    csv_columns = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert equiv <= set(csv_columns)
    assert yaml.safe_load((run / "config.yaml").read_text())["seed_everything"] == 0
    # where the command's time went, from its start: the parts add up to no more than the whole
    seconds = summary["seconds"]
    assert {
        "startup",
        "sanity",
        "train",
        "validate",
        "measure_val",
        "measure_test",
        "test",
        "elapsed",
    } == set(seconds)
    assert min(seconds.values()) >= 0 and seconds["train"] > 0 and seconds["measure_test"] > 0
    assert 0 < seconds["startup"] < seconds["elapsed"]
    assert sum(value for part, value in seconds.items() if part != "elapsed") <= seconds["elapsed"] + 0.05
    wandb_runs = sorted((root / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2

    # accuracy vs angle and vs shift reach wandb as tables (drawn as line plots)
    for curve in ("rotation", "shift"):
        assert list(wandb_runs[0].glob(f"files/media/table/test/{curve}/acc_curve_table_*.table.json"))
    # The run as a user sees it in wandb's terminal dashboard: flat keys to group by, metrics.
    leet = [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json"]
    shown = subprocess.run([*leet, str(wandb_runs[0])], env=env, capture_output=True, text=True, timeout=120)
    record = json.loads(shown.stdout)
    assert record["state"] == "finished" and record["name"] == run.name
    assert {k: record["config"][k] for k in ("backbone", "strategy", "dataset", "seed", "base_pipeline")} == {
        "backbone": "StandardCNN",
        "strategy": "NoSymmetry",
        "dataset": "shapes",
        "seed": 0,
        "base_pipeline": "none",
    }
    assert record["config"]["data"]["init_args"]["train_transform"] == "none"
    assert record["config"]["recipe"] == summary["recipe"]  # AdamW + one-cycle, recorded alike
    assert record["summary"]["test/acc"] == pytest.approx(summary["metrics"]["test/acc"])
    assert record["summary"]["test/equiv/rot90/invariance_error"] == pytest.approx(
        summary["metrics"]["test/equiv/rot90/invariance_error"]
    )

    # load_model on the run directory reproduces the logged test accuracy.
    from symtrain.data import SyntheticShapes

    net = load_model(run)
    assert not net.training and not isinstance(net, __import__("lightning").LightningModule)
    data = SyntheticShapes(num_train=512, num_val=128, num_test=128)
    data.setup("test")
    test = data.splits["test"]
    with torch.no_grad():
        predictions = net(test.images.float() / 255).argmax(dim=1)
    accuracy = (predictions == test.labels).float().mean().item()
    assert accuracy == pytest.approx(summary["metrics"]["test/acc"], abs=1e-6)


@pytest.mark.parametrize("backbone", backbone_configs(), ids=lambda p: p.stem)
def test_every_backbone_config_trains_and_reloads(
    backbone: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fit -> load_model reproduces the logged test accuracy; exported models agree."""
    from symtrain.data import SyntheticShapes

    args = ["fit", "--config", QUICKSTART, "--config", str(backbone), "--config", DEBUG]
    args += [*without_backbone_flags(TINY), *tiny_args(backbone), f"--trainer.default_root_dir={tmp_path}"]
    args += ["--metrics.num_samples=8", "--metrics.test_num_samples=8"]  # every measure, on few images
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    run = only_run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    data = SyntheticShapes(num_train=256, num_val=64, num_test=64)
    data.setup("test")
    test = data.splits["test"]
    images = test.images.float() / 255
    with torch.no_grad():
        logits = load_model(run)(images)
        exported = load_model(run, export=True)(images)
    accuracy = (logits.argmax(dim=1) == test.labels).float().mean().item()
    assert accuracy == pytest.approx(summary["metrics"]["test/acc"], abs=1e-6)
    assert torch.allclose(exported, logits, atol=1e-5)
