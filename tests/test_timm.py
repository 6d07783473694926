"""Any timm CNN in the backbone slot: timm's own features_only stages and anti-aliasing layer,
pretrained weights from the local cache only, and one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from test_cli import run_cli
from timm.layers import BlurPool2d
from timm_cache import cache_timm_weights

from symtrain.backbones import TimmBackbone
from symtrain.errors import SymtrainError

ROOT = Path(__file__).resolve().parents[1]


def test_stages_are_timms_feature_info_and_an_edit_reaches_inside() -> None:
    torch.manual_seed(0)
    backbone = TimmBackbone(1, "resnet10t").eval()
    reference = timm.create_model("resnet10t", features_only=True, in_chans=1)
    assert list(backbone.layer_strides().values()) == reference.feature_info.reduction()
    assert backbone.out_channels == reference.feature_info.channels()[-1]
    images = torch.rand(2, 1, 33, 33)
    with torch.no_grad():
        layers = backbone.layer_outputs(images)
        assert list(layers) == list(backbone.layer_strides())
        assert torch.equal(list(layers.values())[-1], backbone(images))
        for features, stride in zip(layers.values(), backbone.layer_strides().values(), strict=True):
            assert features.shape[-1] == -(-33 // stride)  # ceil(33 / stride)
        zeroed = backbone.layer_outputs(images, lambda name, f: f * 0 if name == "stage2" else f)
    assert torch.equal(zeroed["stage1"], layers["stage1"])
    assert not torch.allclose(zeroed["stage3"], layers["stage3"])  # the later stages read the edit


@pytest.mark.parametrize("antialias", ["blur", "blurpc", "avg"])
def test_antialias_is_timms_own_layer(antialias: str) -> None:
    plain = TimmBackbone(1, "resnet10t")
    smoothed = TimmBackbone(1, "resnet10t", antialias=antialias)
    layer = torch.nn.AvgPool2d if antialias == "avg" else BlurPool2d
    assert not any(isinstance(m, BlurPool2d) for m in plain.modules())
    assert sum(isinstance(m, layer) for m in smoothed.modules()) >= 3  # every strided stage
    assert smoothed.name == f"TimmBackbone-resnet10t-{antialias}"
    with torch.no_grad():
        assert smoothed.eval()(torch.rand(1, 1, 32, 32)).shape == plain.eval()(torch.rand(1, 1, 32, 32)).shape


def test_pretrained_weights_come_from_the_local_cache_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(SymtrainError, match="no cached pretrained weights.*resnet10t") as refused:
        TimmBackbone(3, "resnet10t", pretrained=True)
    assert len(str(refused.value).splitlines()) == 1

    torch.manual_seed(1)
    source = timm.create_model("resnet10t")
    cache_timm_weights(tmp_path, "resnet10t", source)
    loaded = TimmBackbone(3, "resnet10t", pretrained=True)
    assert torch.equal(loaded.model.conv1[0].weight, source.conv1[0].weight)


def test_a_pretrained_tag_names_a_model() -> None:
    """Every name ``timm.create_model`` accepts, the tagged ones that ``list_models`` omits."""
    backbone = TimmBackbone(3, "resnet18.tv_in1k")
    assert backbone.model_name == "resnet18.tv_in1k" and backbone.out_channels == 512


def test_mistakes_end_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for kwargs, message in (
        ({"model_name": "resnet_nonexistent"}, "unknown timm model.*list_models"),
        ({"model_name": "resnet18.no_such_tag"}, r"unknown timm model.*list_pretrained\('resnet18\*'\)"),
        ({"model_name": "convnext_atto", "antialias": "blur"}, "timm cannot antialias convnext_atto"),
        ({"model_name": "resnet10t", "antialias": "median"}, "choose blur, blurpc or avg"),
    ):
        with pytest.raises(SymtrainError, match=message) as refused:
            TimmBackbone(1, **kwargs)
        assert len(str(refused.value).splitlines()) == 1

    def no_features(*args: object, **kwargs: object) -> None:
        raise RuntimeError("features_only not implemented for this model")

    monkeypatch.setattr(timm, "create_model", no_features)
    with pytest.raises(SymtrainError, match="has no features_only interface"):
        TimmBackbone(1, "resnet10t")


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--model.backbone.model_name=resnet_nonexistent"], "unknown timm model 'resnet_nonexistent'"),
        (
            ["--model.backbone.model_name=convnext_atto", "--model.backbone.antialias=blur"],
            "cannot antialias",
        ),
        (
            ["--model.backbone.model_name=resnet10t", "--model.backbone.pretrained=true"],
            "no cached pretrained",
        ),
    ],
)
def test_timm_mistakes_exit_2_with_one_line_from_the_cli(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    args = ["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--model.backbone=TimmBackbone"]
    code, _, err = run_cli(
        [*args, *flags, "--run.wandb=false", f"--trainer.default_root_dir={tmp_path}"], capsys
    )
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
