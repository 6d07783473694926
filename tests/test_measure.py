"""Measuring any model: ``symtrain.measure()`` and ``python -m symtrain measure`` give a run's own
numbers for a symtrain run, measure timm, torchvision and plain modules, write runs that
``report`` puts beside trained ones, sweep a model zoo, and refuse bad input in one line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from test_cli import run_cli as run
from timm_cache import cache_timm_weights
from torch import nn

import symtrain
from symtrain import load_model
from symtrain.__main__ import main
from symtrain.data import ImageFolder, SyntheticShapes
from symtrain.errors import SymtrainError
from symtrain.metrics.base import Settings, measures_for
from symtrain.transforms import CircularShift, Rot90, Rotation, Shift

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHAPES = ["--config", str(CONFIGS / "data" / "shapes.yaml")]
TINY_SHAPES = ["--data.num_train=64", "--data.num_val=32", "--data.num_test=200", "--data.batch_size=32"]
TINY_METRICS = ["--metrics.test_num_samples=48"]
# Measured keys: everything the callback logs at test (the upright score comes from the test step).
MEASURED = ("test/equiv/", "test/lie/", "test/diffeo/")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny quickstart run on the shapes: 200 test images in batches of 32 (a short last batch)."""
    root = tmp_path_factory.mktemp("trained")
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "quickstart.yaml"),
            *TINY_SHAPES,
            *TINY_METRICS,
            "--model.backbone.width=4",
            "--trainer.max_epochs=2",
            f"--trainer.default_root_dir={root}",
            "--run.name=cnn",
            "--run.wandb=false",
            "--run.quiet=true",
        ]
    )
    return root / "cnn"


def measured_part(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(MEASURED)}


def shapes_of(run_dir: Path) -> SyntheticShapes:
    data = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["init_args"]
    return SyntheticShapes(**data)


@pytest.mark.slow
def test_measure_gives_the_runs_own_test_numbers_to_the_last_digit(trained: Path) -> None:
    """``symtrain.measure()`` on a reloaded model and its data: the callback's values exactly."""
    summary = json.loads((trained / "summary.json").read_text())
    values = symtrain.measure(load_model(trained), shapes_of(trained), num_samples=48)
    expected = measured_part(summary["metrics"])
    assert len(expected) > 30
    assert {k: v for k, v in values.items() if k in expected} == expected
    assert not set(expected) - set(values)
    # The same images as a DataLoader, in other batches: the same values.
    subset = shapes_of(trained)
    subset.setup("test")
    chosen = subset.splits["test"].sample(48, 0)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(chosen.images, chosen.labels), batch_size=20
    )
    again = symtrain.measure(load_model(trained), loader, measures=["invariance_error", "consistency", "acc"])
    assert again == {
        k: v for k, v in values.items() if k.rsplit("/", 1)[1] in ("invariance_error", "consistency", "acc")
    }


@pytest.mark.slow
def test_the_command_measures_a_run_as_its_test_did_and_report_puts_them_in_one_table(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        [
            "measure",
            "--model=SymtrainRun",
            f"--model.path={trained}",
            *SHAPES,
            *TINY_SHAPES,
            *TINY_METRICS,
            f"--root={tmp_path}",
            "--run.name=again",
        ],
        capsys,
    )
    assert code == 0, err
    mine = json.loads((trained / "summary.json").read_text())
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert set(mine) <= set(again) and again["measured"]["source"] == "symtrain"
    assert measured_part(again["metrics"]) == measured_part(mine["metrics"])
    assert again["metrics"]["test/acc"] == mine["metrics"]["test/acc"]
    assert again["metrics"]["test/loss"] == pytest.approx(mine["metrics"]["test/loss"], rel=1e-6)
    assert again["curves"] == mine["curves"] and again["families"] == mine["families"]
    assert (tmp_path / "again" / "config.yaml").is_file() and (tmp_path / "again" / "metrics.csv").is_file()
    assert list((tmp_path / "wandb").glob("offline-run-*")), "a wandb run, offline, in the same project"
    assert "measured " in out and "rot90:" in out
    # One table: the trained run and the measured one.
    code, out, err = run(
        ["report", str(trained), str(tmp_path / "again"), "--out", str(tmp_path / "report")], capsys
    )
    assert code == 0, err
    table = (tmp_path / "report" / "report.md").read_text()
    # Its row is the measured run's own (named by the run it measured), not a second seed of it.
    assert "| StandardCNN + NoSymmetry | 1 |" in table and "| cnn | 1 |" in table


@pytest.mark.slow
def test_the_test_loss_is_the_mean_over_images_not_over_batches(trained: Path) -> None:
    """200 test images in batches of 32: a short last batch weighs as its 8 images."""
    net, data = load_model(trained), shapes_of(trained)
    data.setup("test")
    split = data.splits["test"]
    with torch.no_grad():
        losses = F.cross_entropy(net(split.images.float() / 255), split.labels, reduction="none")
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["metrics"]["test/loss"] == pytest.approx(losses.mean().item(), rel=1e-6)


def tiny_net_file(tmp_path: Path) -> Path:
    source = tmp_path / "mynet.py"
    source.write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Net(nn.Module):
                def __init__(self, classes: int = 8, width: int = 4) -> None:
                    super().__init__()
                    self.conv = nn.Conv2d(1, width, 3, padding=1)
                    self.fc = nn.Linear(width, classes)

                def forward(self, x):
                    return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

            class Patches(Net):  # not logits: (B, K, 3)
                def forward(self, x):
                    return super().forward(x)[..., None].expand(-1, -1, 3)

            class Big(nn.Module):  # needs 40-pixel images
                def __init__(self) -> None:
                    super().__init__()
                    self.conv = nn.Conv2d(1, 2, 40)

                def forward(self, x):
                    return self.conv(x).flatten(1)
            """
        )
    )
    return source


def test_timm_and_a_module_from_a_file_are_measured_label_free_or_scored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [
        *SHAPES,
        *TINY_SHAPES,
        "--metrics.test_num_samples=16",
        f"--root={tmp_path}",
        "--run.wandb=false",
    ]
    code, out, err = run(
        [
            "measure",
            "--model=TimmModel",
            "--model.name=test_resnet",
            "--model.pretrained=false",
            *common,
            "--run.name=timm",
        ],
        capsys,
    )
    assert code == 0, err
    assert "no accuracy: the data's class" in err and "ImageNet synsets" in err
    timm_run = json.loads((tmp_path / "timm" / "summary.json").read_text())
    assert "test/acc" not in timm_run["metrics"] and timm_run["measured"]["accuracy"] is None
    assert (
        "test/equiv/rot90/invariance_error" in timm_run["metrics"]
        and "test/lie/rotation" in timm_run["metrics"]
    )
    assert {m["key"] for m in timm_run["measures"]}.isdisjoint({"acc", "curve", "layer"})
    assert (
        timm_run["backbone"] == "test_resnet" and timm_run["measured"]["preprocessing"]["image_size"] == 160
    )

    source = tiny_net_file(tmp_path)
    torch.manual_seed(0)
    weights = tmp_path / "net.pt"
    spec = __import__("importlib.util").util.spec_from_file_location("mynet_for_weights", source)
    module = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(module.Net().state_dict(), weights)
    code, out, err = run(
        [
            "measure",
            "--model=ModuleFile",
            f"--model.module={source}:Net",
            f"--model.weights={weights}",
            *common,
            "--run.name=mine",
        ],
        capsys,
    )
    assert code == 0, err
    mine = json.loads((tmp_path / "mine" / "summary.json").read_text())
    assert mine["measured"]["accuracy"].startswith("in order")
    assert 0 <= mine["metrics"]["test/acc"] <= 1 and "test/equiv/rot90/acc" in mine["metrics"]
    # The weights were loaded: the score is the saved module's, over the whole test split.
    net = module.Net()
    net.load_state_dict(torch.load(weights))
    data = SyntheticShapes(num_train=64, num_val=32, num_test=200)
    data.setup("test")
    with torch.no_grad():
        predicted = net(data.splits["test"].images.float() / 255).argmax(dim=1)
    assert mine["metrics"]["test/acc"] == pytest.approx(
        (predicted == data.splits["test"].labels).float().mean().item()
    )
    code, out, err = run(
        ["report", str(tmp_path / "timm"), str(tmp_path / "mine"), "--out", str(tmp_path / "r")], capsys
    )
    assert code == 0, err
    table = (tmp_path / "r" / "report.md").read_text()
    assert "test_resnet" in table and "Net" in table and "n/a" in table


def fake_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> nn.Module:
    """A Hugging Face cache holding seeded weights for timm model ``name``, as timm's download
    would leave them."""
    import huggingface_hub.constants
    import timm

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    torch.manual_seed(3)
    source = timm.create_model(name).eval()
    cache_timm_weights(tmp_path / "hub", name, source)
    return source


def synset_folder(root: Path, synsets: list[str], sizes: list[tuple[int, int]]) -> Path:
    """A tiny ImageNet-like folder: train/ and val/ with one class directory per synset, photos
    of mixed sizes and modes."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for k, synset in enumerate(synsets):
            (root / split / synset).mkdir(parents=True)
            for i, size in enumerate(sizes):
                pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
                image = Image.fromarray(pixels.numpy())
                (image.convert("L") if i % 2 else image).save(root / split / synset / f"{k}{i}.png")
    return root


def test_a_pretrained_timm_model_comes_from_the_cache_with_its_data_config_and_synsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from timm.data import ImageNetInfo

    name = "test_resnet.r160_in1k"
    source = fake_hf_cache(tmp_path, monkeypatch, name)
    synsets = ImageNetInfo().label_names()[:2]
    folder = synset_folder(tmp_path / "imagenet", synsets, [(170, 180), (200, 165)])
    code, out, err = run(
        [
            "measure",
            "--config",
            str(CONFIGS / "measure" / "timm.yaml"),
            f"--model.name={name}",
            f"--data.root={folder}",
            "--metrics.test_num_samples=4",
            f"--root={tmp_path / 'runs'}",
            "--run.name=cached",
            "--run.wandb=false",
            "--metrics.measures=[acc, invariance_error]",
        ],
        capsys,
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "runs" / "cached" / "summary.json").read_text())
    # timm's data config for this model: 160 pixels, crop_pct 0.95, bilinear; the folder's left open.
    assert summary["data"]["image_size"] == 160 and summary["data"]["crop_fraction"] == 0.95
    assert summary["data"]["interpolation"] == "bilinear" and summary["data"]["channels"] == 3
    assert summary["measured"]["accuracy"] == "by ImageNet synset" and summary["measured"][
        "weights"
    ].endswith("model.safetensors")
    # The score is the cached model's: its top-1 over the synsets' indices.
    data = ImageFolder(
        str(folder),
        image_size=160,
        crop_fraction=0.95,
        interpolation="bilinear",
        channels=3,
        mean=[0.5] * 3,
        std=[0.5] * 3,
    )
    data.setup("test")
    images, labels = data.splits["test"].images.float() / 255, data.splits["test"].labels
    with torch.no_grad():
        predicted = source((images - 0.5) / 0.5).argmax(dim=1)
    expected = (predicted == torch.tensor([0, 1])[labels]).float().mean().item()
    assert summary["metrics"]["test/acc"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "flags,message",
    [
        (
            ["--model=TimmModel", "--model.name=resnet_nonexistent"],
            "unknown timm model 'resnet_nonexistent'.*list_models",
        ),
        (
            ["--model=Nope"],
            r"model: unknown class 'Nope' \(valid choices: ModuleFile, SymtrainRun, TimmModel",
        ),
        (
            ["--model=TimmModel", "--model.name=resnet10t"],
            "no cached pretrained weights for timm model 'resnet10t'",
        ),
        (
            ["--model=TorchvisionModel", "--model.name=resnet_nonexistent"],
            "unknown torchvision model.*list_models",
        ),
        (["--model=TorchvisionModel", "--model.name=resnet18"], "no weights of torchvision resnet18 at"),
        (["--model=SymtrainRun", "--model.path=NOT_A_CKPT"], "is not a valid checkpoint|not a checkpoint"),
        (
            ["--model=ModuleFile", "--model.module=NET:Patches"],
            r"output on one 1x32x32 image is \(1, 8, 3\)",
        ),
        (["--model=ModuleFile", "--model.module=NET:Big"], "cannot run on 1x32x32 images"),
        (
            ["--model=ModuleFile", "--model.module=NET:Net", "--model.weights=NOT_A_CKPT"],
            "is not a state dict",
        ),
        (
            [
                "--model=ModuleFile",
                "--model.module=NET:Net",
                "--metrics.families=[{class_path: CircularShift, init_args: {max_pixels: 40}}]",
            ],
            "family circular_shift cannot be measured on 32x32 images",
        ),
        (
            [
                "--model=TimmModel",
                "--model.name=test_resnet",
                "--model.pretrained=false",
                "--metrics.measures=[lie, lie_layers]",
            ],
            "measure 'lie_layers' needs a backbone's declared stages.*needing stages: layer, lie_layers",
        ),
    ],
)
def test_bad_input_ends_in_one_line_and_exit_2_leaving_no_run(
    flags: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    source = tiny_net_file(tmp_path)
    not_a_checkpoint = tmp_path / "model.ckpt"
    not_a_checkpoint.write_text("hello")
    flags = [f.replace("NET", str(source)).replace("NOT_A_CKPT", str(not_a_checkpoint)) for f in flags]
    code, out, err = run(
        [
            "measure",
            *flags,
            *SHAPES,
            *TINY_SHAPES,
            "--metrics.test_num_samples=8",
            f"--root={tmp_path / 'runs'}",
            "--run.wandb=false",
        ],
        capsys,
    )
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("symtrain: error: "), err
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_torchvision_model_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        [
            "measure",
            "--model=TorchvisionModel",
            "--model.name=squeezenet1_1",
            "--model.weights=null",
            *SHAPES,
            *TINY_SHAPES,
            "--metrics.test_num_samples=8",
            "--metrics.measures=[invariance_error]",
            f"--root={tmp_path}",
            "--run.name=tv",
            "--run.wandb=false",
        ],
        capsys,
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "tv" / "summary.json").read_text())
    assert summary["measured"]["source"] == "torchvision" and summary["backbone"] == "squeezenet1_1"
    assert "test/equiv/rot90/invariance_error" in summary["metrics"]


def test_what_each_measure_needs_decides_what_runs_without_labels_or_stages(images: torch.Tensor) -> None:
    needs = {cls.key: cls.needs for cls in measures_for("classification", [k for k in _all_keys()])}
    assert needs["acc"] == {"labels"} and needs["curve"] == {"labels"}
    assert needs["layer"] == {"stages"} and needs["lie_layers"] == {"stages"}
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    values = symtrain.measure(net, images, [Rot90()])  # no labels, no stages: the rest
    assert "test/equiv/rot90/invariance_error" in values and not any("/acc" in k for k in values)
    with pytest.raises(SymtrainError, match="measure 'acc' needs labels"):
        symtrain.measure(net, images, [Rot90()], ["acc"])
    scored = symtrain.measure(net, (images, torch.zeros(6, dtype=torch.long)), [Rot90()], ["acc"])
    assert 0 <= scored["test/equiv/rot90/acc"] <= 1


def _all_keys() -> list[str]:
    return sorted({cls.key for cls in measures_for("classification", None)} | {"lie_layers"})


def test_known_answers_and_batch_independence(images: torch.Tensor) -> None:
    """A function invariant by construction measures 0, and the batch size changes nothing."""
    pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 4))
    families = [Rot90(), CircularShift(max_pixels=4), Shift(max_pixels=2), Rotation()]
    values = symtrain.measure(pooled, images, families[:2], ["invariance_error", "consistency"])
    assert values["test/equiv/rot90/invariance_error"] < 1e-6
    assert values["test/equiv/circular_shift/invariance_error"] < 1e-6
    assert values["test/equiv/rot90/consistency"] == 1.0
    net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    settings = Settings(draws=2, angle_step=0, max_shift=0)
    one = symtrain.measure(
        net, images, families, ["invariance_error", "consistency", "lie"], settings=settings, batch_size=1
    )
    six = symtrain.measure(
        net, images, families, ["invariance_error", "consistency", "lie"], settings=settings
    )
    assert one.keys() == six.keys() and all(one[k] == pytest.approx(six[k], rel=1e-5, abs=1e-7) for k in one)


def test_bf16_runs_and_stays_near_float32(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    exact = symtrain.measure(net, images, [Rot90(), Shift(2)], ["invariance_error"])
    rounded = symtrain.measure(net, images, [Rot90(), Shift(2)], ["invariance_error"], precision="bf16")
    assert exact.keys() == rounded.keys()
    assert all(abs(exact[k] - rounded[k]) < 0.05 for k in exact)


@pytest.mark.slow
def test_the_sweep_measures_each_model_reports_failures_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """configs/compare/lie_timm.yaml as shipped, at tiny size: random-initialised test models of
    timm on the shapes, and a name timm does not know."""
    monkeypatch.chdir(ROOT)
    spec = yaml.safe_load((CONFIGS / "compare" / "lie_timm.yaml").read_text())
    spec.update(
        base=[*spec["base"], str(CONFIGS / "data" / "shapes.yaml")],
        models=["test_resnet", "test_efficientnet", "no_such_model"],
        root=str(tmp_path / "studies"),
    )
    spec["args"] = [
        *spec["args"],
        "--model.pretrained=false",
        *TINY_SHAPES,
        "--metrics.test_num_samples=16",
        "--metrics.families=[{class_path: Rot90}, {class_path: CircularShift, init_args: {max_pixels: 4}}]",
        "--metrics.max_shift=4",
        "--run.wandb=false",
    ]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    code, out, err = run(["compare", "--config", str(path)], capsys)
    assert code == 0, err
    study = tmp_path / "studies" / "lie_timm"
    assert "[1/3] test_resnet: measuring" in out and "[3/3] no_such_model: failed: unknown timm model" in out
    assert (study / "test_resnet" / "summary.json").is_file() and (
        study / "test_efficientnet" / "summary.json"
    ).is_file()
    failure = json.loads((study / "no_such_model" / "failure.json").read_text())
    assert "unknown timm model" in failure["reason"]
    report = (study / "report" / "report.md").read_text()
    assert "no_such_model" in report and "failed: unknown timm model" in report
    # Again: the measured models are skipped, the failed one is tried again.
    code, out, err = run(["compare", "--config", str(path)], capsys)
    assert "[1/3] test_resnet: finished before, skipped" in out and "[3/3] no_such_model: failed" in out


@pytest.mark.slow
def test_a_folder_of_real_photos_streams_to_the_same_numbers_it_gives_in_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real digits as files of every size, format, mode and EXIF orientation, at an odd size:
    streamed from disk in the loader's workers or held in memory, the same measurement."""
    from test_folder import digits_folder

    digits_folder(tmp_path / "photos", per_split=40)
    source = tiny_net_file(tmp_path)
    summaries = {}
    for storage in ("memory", "stream"):
        code, out, err = run(
            [
                "measure",
                "--model=ModuleFile",
                f"--model.module={source}:Net",
                "--model.module_args={classes: 10}",
                "--config",
                str(CONFIGS / "data" / "folder.yaml"),
                f"--data.root={tmp_path / 'photos'}",
                "--data.image_size=29",
                "--data.channels=1",
                f"--data.storage={storage}",
                "--data.num_workers=2",
                "--data.mean=[0.5]",
                "--data.std=[0.25]",
                "--metrics.test_num_samples=24",
                "--metrics.measures=[acc, invariance_error, consistency, lie]",
                f"--root={tmp_path / 'runs'}",
                f"--run.name={storage}",
                "--run.wandb=false",
            ],
            capsys,
        )
        assert code == 0, err
        summaries[storage] = json.loads((tmp_path / "runs" / storage / "summary.json").read_text())
    assert (
        summaries["stream"]["data"]["storage"] == "stream"
        and summaries["memory"]["data"]["storage"] == "memory"
    )
    assert summaries["stream"]["metrics"] == summaries["memory"]["metrics"]
    assert (
        summaries["memory"]["data"]["image_size"] == 29
        and "test/lie/rotation" in summaries["memory"]["metrics"]
    )


@pytest.mark.parametrize("config", sorted((CONFIGS / "measure").glob("*.yaml")), ids=lambda p: p.name)
def test_every_measure_config_parses(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["measure", "--config", str(config), *SHAPES, "--print_config"], capsys)
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["model"]["class_path"].startswith("symtrain.zoo.") and printed["data"]["class_path"]
