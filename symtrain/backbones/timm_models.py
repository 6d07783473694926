"""Any timm CNN in the backbone slot, through timm's own ``features_only`` interface."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from symtrain.backbones.base import Backbone, Feature, LayerEdit, Pyramid
from symtrain.backbones.pyramid import PyramidDecoder
from symtrain.errors import SymtrainError
from symtrain.transforms import CircularShift, Shift, Symmetries

Antialias = Literal["blur", "blurpc", "avg"]


def _aa_layer(antialias: Antialias) -> type[nn.Module]:
    """timm's own anti-aliasing layer for ``antialias``, as a class: timm's ResNet tests the
    class itself (``issubclass(aa_layer, nn.AvgPool2d)``), so timm's string shorthands and its
    partial for ``blurpc`` do not reach it."""
    from timm.layers import BlurPool2d

    if antialias == "avg":
        return nn.AvgPool2d
    if antialias == "blur":
        return BlurPool2d

    class ConstantPadBlurPool2d(BlurPool2d):
        """timm's ``blurpc``: BlurPool2d padding with zeros."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("pad_mode", "constant")
            super().__init__(*args, **kwargs)

    return ConstantPadBlurPool2d


def check_timm_name(model_name: str) -> None:
    """Refuse, in one line naming how to list the valid ones, a name timm does not know.

    Raises:
        SymtrainError: for an unknown model, or an unknown pretrained tag of a known one.
    """
    import timm

    # is_model, not list_models(): the list omits pretrained tags (resnet18.tv_in1k), which
    # create_model accepts; an unknown tag of a known model is refused here too.
    arch, tag = model_name.partition(".")[::2]
    if not timm.is_model(model_name) or (tag and model_name not in timm.list_pretrained(model_name)):
        listing = f"timm.list_pretrained('{arch}*')" if tag else f"timm.list_models('{model_name[:3]}*')"
        raise SymtrainError(
            f"unknown timm model {model_name!r}: list valid ones with "
            f'python -c "import timm; print({listing})"'
        )


def cached_weights(model_name: str, otherwise: str) -> str:
    """The local file of ``model_name``'s pretrained weights in the Hugging Face cache; nothing is
    downloaded.

    Raises:
        SymtrainError: when they are not there, saying how to get them (or ``otherwise``).
    """
    import timm
    from huggingface_hub import try_to_load_from_cache

    config = timm.models.get_pretrained_cfg(model_name)
    repo = config.hf_hub_id if config is not None else None
    for filename in ("model.safetensors", "pytorch_model.bin") if repo else ():
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str) and Path(found).is_file():
            return found
    home = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub"
    )
    raise SymtrainError(
        f"no cached pretrained weights for timm model {model_name!r} under {home}: download "
        f"them once with python -c \"import timm; timm.create_model('{model_name}', "
        f'pretrained=True)" where there is network, or {otherwise}'
    )


class TimmBackbone(Backbone):
    """Any timm CNN, built by timm with ``features_only=True``: its stages' feature maps, with
    the strides and channels timm's ``feature_info`` gives, are the layers the layer-wise
    measures read, the last one is the feature map the head pools, and all of them feed the
    segmentation decoder (:class:`~symtrain.backbones.pyramid.PyramidDecoder`).

    ``antialias`` puts timm's own anti-aliasing layer in every strided downsampling (``aa_layer``:
    ``blur`` and ``blurpc`` are timm's ``BlurPool2d``, blur-before-subsample as in Zhang 2019,
    reflect- or zero-padded; ``avg`` is average pooling), where the model supports it.
    ``pretrained: true`` loads the weights from the local Hugging Face cache only: nothing is
    ever downloaded at run time.

    Args:
        in_channels: image channels (timm adapts the first convolution, as ``in_chans``).
        model_name: any timm model with ``features_only`` support, e.g. ``resnet18``
            (``python -c "import timm; print(timm.list_models('resnet*'))"`` lists them).
        pretrained: load timm's pretrained weights from the local cache.
        antialias: ``blur``, ``blurpc`` or ``avg``; None keeps the model's own downsampling.
        **kwargs: further arguments of the timm model (e.g. ``drop_rate``).
    """

    examples = ({"model_name": "resnet10t"}, {"model_name": "resnet10t", "antialias": "blur"})
    tiny: ClassVar[dict[str, Any]] = {}  # the model is what a config chooses: trained as it is
    setting_ranges: ClassVar[dict[str, tuple[Any, ...]]] = {
        "model_name": ("resnet10t",),
        "antialias": (None, "blur", "blurpc", "avg"),
    }

    def __init__(
        self,
        in_channels: int,
        model_name: str = "resnet18",
        pretrained: bool = False,
        antialias: Antialias | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        import timm  # imported here: a second or so that only a timm backbone should cost

        check_timm_name(model_name)
        self.model_name, self.antialias, self.pretrained = model_name, antialias, pretrained
        if antialias is not None:
            if antialias not in ("blur", "blurpc", "avg"):
                raise SymtrainError(f"antialias={antialias!r}: choose blur, blurpc or avg (timm's aa_layer)")
            kwargs["aa_layer"] = _aa_layer(antialias)
        if pretrained:
            kwargs["pretrained_cfg_overlay"] = {"file": cached_weights(model_name, "pretrained: false")}
        try:
            self.model = timm.create_model(
                model_name, features_only=True, pretrained=pretrained, in_chans=in_channels, **kwargs
            )
        except TypeError as error:
            if "aa_layer" in str(error):
                raise SymtrainError(
                    f"timm cannot antialias {model_name} (it takes no aa_layer): drop antialias "
                    "or choose a model that does, e.g. resnet18"
                ) from None
            raise SymtrainError(f"timm model {model_name}: {error}") from None
        except RuntimeError as error:
            if "features_only" in str(error):
                raise SymtrainError(
                    f"timm model {model_name} has no features_only interface: choose a CNN such as "
                    "resnet18, convnext_atto or efficientnet_b0"
                ) from None
            raise
        info = self.model.feature_info
        self.stage_names = [f"stage{i + 1}" for i in range(len(info.channels()))]
        self.stage_strides = dict(zip(self.stage_names, info.reduction(), strict=True))
        self.out_channels = info.channels()[-1]

    @property
    def name(self) -> str:
        suffix = f"-{self.antialias}" if self.antialias else ""
        return f"{type(self).__name__}-{self.model_name}{suffix}"

    def forward(self, images: Tensor) -> Tensor:  # (B, C, H, W) -> (B, out_channels, h, w)
        return self.model(images)[-1]

    def encode(self, images: Tensor) -> Pyramid:
        *finer, coarsest = self.model(images)
        return Pyramid(finer, coarsest, [None] * len(finer), tuple(images.shape[-2:]))

    def feature_info(self) -> list[Feature]:
        """timm's own ``feature_info``: every stage's stride and channels."""
        channels = self.model.feature_info.channels()
        return [
            Feature(name, self.stage_strides[name], c)
            for name, c in zip(self.stage_names, channels, strict=True)
        ]

    def decoder(self, num_classes: int) -> nn.Module:
        """A U-Net decoder over the stages timm declares (:class:`PyramidDecoder`)."""
        return PyramidDecoder([feature.channels for feature in self.feature_info()], num_classes)

    def declared_symmetries(self) -> Symmetries:
        # Convolutions and pooling: shift equivariance only approximately (strides and padding).
        return {Shift(): "approximate", CircularShift(): "approximate"}

    def layer_strides(self) -> dict[str, int]:
        from timm.models._features import FeatureDictNet

        # Models whose features come from hooks cannot have a map replaced inside them.
        return super().layer_strides() if isinstance(self.model, FeatureDictNet) else {}

    def layer_outputs(self, images: Tensor, edit: LayerEdit | None = None) -> dict[str, Tensor]:
        """timm's own feature collection (``FeatureDictNet._collect``), with ``edit`` applied to
        each returned map before the next module reads it."""
        if not self.layer_strides():
            return {}
        returned = dict(zip(self.model.return_layers, self.stage_names, strict=True))
        outputs: dict[str, Tensor] = {}
        features = images
        for module_name, module in self.model.items():
            features = module(features)
            if module_name in returned:
                name = returned[module_name]
                features = edit(name, features) if edit is not None else features
                outputs[name] = features
        return outputs
