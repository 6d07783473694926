"""Measuring models from elsewhere with ``python -m symtrain measure``: timm (random or cached
pretrained weights, with its data config and synsets), torchvision, plain modules from a file,
a sweep of a model zoo that reports failures and resumes, a folder of real photos streamed or
in memory; every shipped measure config parses, and bad input ends in one line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from measure_helpers import CONFIGS, ROOT, SHAPES, TINY_SHAPES
from test_cli import run_cli as run
from timm_cache import cache_timm_weights
from torch import nn

from symtrain.data import ImageFolder, SyntheticShapes


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
