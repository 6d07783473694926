"""Models to measure, from wherever they were trained: a symtrain run, a timm model (pretrained
tags included), a torchvision model, or any ``nn.Module`` from a file with its state dict.

Each source loads a :class:`Measurable`: the network as the measures take it (float images in
[0, 1] to logits, its normalisation inside, in eval mode), what it expects of its input (its
own data config: size, crop, interpolation, channels), the class each output stands for where
that is known (ImageNet's synsets for ImageNet models), and what a report names it by. Weights
come from local files only unless a source is told it may download: a missing file ends in one
line saying how to get it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from symtrain.errors import SymtrainError


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of its images, as its own data config says (None: it does not say).

    Attributes:
        image_size: the side of the square images it was trained or evaluated at.
        crop_fraction: the share of the resized shorter side its evaluation crop keeps (timm's
            ``crop_pct``: 0.875 resizes to 256 and crops 224).
        interpolation: its evaluation resize's interpolation (``bilinear``, ``bicubic``).
        channels: the channels it takes (grayscale images are repeated to RGB for a 3-channel
            model).
    """

    image_size: int | None = None
    crop_fraction: float | None = None
    interpolation: str | None = None
    channels: int | None = None


@dataclass
class Measurable:
    """A model ready to measure.

    Attributes:
        net: float images in [0, 1], (B, C, H, W), to logits (B, K) or (B, K, H, W), in eval mode.
        name: what reports call it (the run's, or the model's name).
        source: ``symtrain``, ``timm``, ``torchvision`` or ``module``.
        preprocessing: what it expects of its input.
        labels: the class each output index stands for (ImageNet synsets, or class names), or
            None when the model does not say.
        identity: ``backbone``, ``strategy`` and ``base_pipeline`` as a run records them.
        weights: where its weights came from (a file, a tag, ``random``).
        loss: the loss of a batch (logits, targets) -> scalar that ``test/loss`` reports: the
            run's own task loss for a symtrain run (label smoothing, Dice), else cross-entropy.
        recipe: how it was trained, where that is known (a symtrain run's ``recipe``).
    """

    net: nn.Module
    name: str
    source: str
    preprocessing: Preprocessing
    labels: list[str] | None = None
    identity: dict[str, str] = field(default_factory=dict)
    weights: str = "random"
    loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
    recipe: dict[str, Any] | None = None

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())


class Standardized(nn.Module):
    """A model trained on standardised images, taking images in [0, 1]: grayscale images
    repeated to the model's channels (as a conversion to RGB does), then (x − mean) / std."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        from symtrain.module import Normalize

        self.model = model
        self.normalize = Normalize(mean, std)
        self.channels = len(mean)

    def forward(self, images: Tensor) -> Tensor:  # (B, C, H, W) in [0, 1] -> the model's output
        if images.shape[1] == 1 and self.channels > 1:
            images = images.expand(-1, self.channels, -1, -1)
        return self.model(self.normalize(images))


def imagenet_synsets(num_classes: int, subset: str | None = "imagenet-1k") -> list[str] | None:
    """The WordNet synsets of an ImageNet model's outputs in index order (timm's ImageNet info),
    which an ImageNet folder's class directories are named by; None for other class counts."""
    from timm.data import ImageNetInfo

    if subset is None:
        return None
    info = ImageNetInfo(subset)
    return info.label_names() if info.num_classes() == num_classes else None


class ModelSource:
    """Base class of the model sources a ``measure`` config chooses by ``class_path``."""

    def load(self) -> Measurable:
        """The model, ready to measure."""
        raise NotImplementedError


class SymtrainRun(ModelSource):
    """A model trained by symtrain: a run directory (its best checkpoint) or a checkpoint file,
    as :func:`symtrain.load_model` takes it. It is measured exactly as its own test measured it.

    Args:
        path: the run directory or ``.ckpt`` file.
        export: measure the plain-torch export of an escnn backbone (same outputs).
    """

    def __init__(self, path: str, export: bool = False) -> None:
        self.path, self.export = path, export

    def load(self) -> Measurable:
        from symtrain.runs import find_checkpoint, load_module, run_of_checkpoint

        checkpoint = find_checkpoint(self.path)
        module = load_module(checkpoint)
        net = module.net.eval()
        net = net.export() if self.export else net
        run_dir = run_of_checkpoint(checkpoint)
        summary, data = {}, {}
        if run_dir is not None and (run_dir / "summary.json").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
            data = summary.get("data", {})
        if run_dir is not None and not data and (run_dir / "config.yaml").is_file():
            config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
            data = (config.get("data") or {}).get("init_args") or {}
        # Named by its run directory: a report shows it beside the run itself, not as its second seed.
        name = run_dir.name if run_dir is not None else checkpoint.stem
        return Measurable(
            net,
            name,
            "symtrain",
            Preprocessing(image_size=data.get("image_size"), channels=data.get("channels")),
            labels=data.get("class_names"),
            identity={
                "backbone": summary.get("backbone", name),
                "strategy": summary.get("strategy", "symtrain"),
                "base_pipeline": summary.get("base_pipeline", "none"),
                "dataset": data.get("name", ""),
            },
            weights=str(checkpoint),
            loss=module.task.loss,
            # the run's record (an EMA's settings included), else what its hyperparameters say
            recipe=summary.get("recipe") or module.recipe(),
        )


class TimmModel(ModelSource):
    """A timm model by name, pretrained tags included (``resnet50.a1_in1k``), with timm's own data
    config for it (input size, crop, interpolation, mean and std).

    Args:
        name: any name ``timm.create_model`` takes (``timm.list_models('resnet*')`` and
            ``timm.list_pretrained('resnet50*')`` list them).
        pretrained: load timm's pretrained weights (from the local Hugging Face cache, or
            ``weights``); false measures the randomly initialised model.
        weights: a local file of weights (``.safetensors``, ``.pth``) to load instead.
        download: let timm download missing weights (off: nothing is fetched at run time).
        kwargs: further arguments of ``timm.create_model`` (e.g. ``num_classes``).
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = True,
        weights: str | None = None,
        download: bool = False,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.name, self.pretrained, self.weights, self.download = name, pretrained, weights, download
        self.kwargs = dict(kwargs or {})

    def load(self) -> Measurable:
        import timm
        from timm.data import infer_imagenet_subset, resolve_data_config

        from symtrain.backbones.timm_models import cached_weights, check_timm_name

        check_timm_name(self.name)
        kwargs = dict(self.kwargs)
        source = "random"
        if self.weights is not None:
            if not Path(self.weights).is_file():
                raise SymtrainError(f"model.weights {self.weights!r} does not exist: pass a weights file")
            kwargs["pretrained_cfg_overlay"] = {"file": self.weights}
            source = self.weights
        elif self.pretrained and not self.download:
            kwargs["pretrained_cfg_overlay"] = {"file": cached_weights(self.name, "set download: true")}
            source = kwargs["pretrained_cfg_overlay"]["file"]
        elif self.pretrained:
            source = f"timm {self.name}"
        try:
            model = timm.create_model(
                self.name, pretrained=self.pretrained or self.weights is not None, **kwargs
            )
        except (RuntimeError, ValueError, TypeError, OSError) as error:
            reason = " ".join(str(error).split())[:200]
            raise SymtrainError(
                f"timm cannot build {self.name!r} ({reason}): check model.kwargs and weights"
            ) from None
        config = resolve_data_config({}, model=model)
        channels, height, _ = config["input_size"]
        net = Standardized(model, tuple(config["mean"]), tuple(config["std"])).eval()
        return Measurable(
            net,
            self.name,
            "timm",
            Preprocessing(height, config.get("crop_pct"), config.get("interpolation"), channels),
            labels=imagenet_synsets(model.num_classes, infer_imagenet_subset(model)),
            identity={"backbone": self.name, "strategy": "timm", "base_pipeline": "not recorded"},
            weights=source,
        )


class TorchvisionModel(ModelSource):
    """A torchvision model by name (``resnet18``, ``vit_b_16``), with its weights enum's
    preprocessing (resize, crop, interpolation, mean and std) and categories.

    Args:
        name: a name ``torchvision.models.get_model`` takes (``torchvision.models.list_models()``).
        weights: a weights enum member's name (``IMAGENET1K_V1``), ``DEFAULT``, or None for the
            randomly initialised model (then ImageNet's usual preprocessing).
        download: let torchvision download missing weights (off: they must be in torch's hub
            cache, ``torch.hub.get_dir()/checkpoints``).
    """

    def __init__(self, name: str, weights: str | None = "DEFAULT", download: bool = False) -> None:
        self.name, self.weights, self.download = name, weights, download

    def load(self) -> Measurable:
        import torchvision

        if self.name not in torchvision.models.list_models():
            raise SymtrainError(
                f"unknown torchvision model {self.name!r}: list valid ones with "
                'python -c "import torchvision; print(torchvision.models.list_models())"'
            )
        enum = torchvision.models.get_model_weights(self.name)
        weights = None
        if self.weights is not None:
            try:
                weights = enum[self.weights] if self.weights != "DEFAULT" else enum.DEFAULT
            except KeyError:
                choices = ", ".join(["DEFAULT", *enum.__members__])
                raise SymtrainError(
                    f"torchvision {self.name} has no weights {self.weights!r}: choose one of {choices}"
                ) from None
            file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
            if not file.is_file() and not self.download:
                raise SymtrainError(
                    f"no weights of torchvision {self.name} at {file}: download {weights.url} there "
                    "where there is network, or set download: true, or weights: null"
                )
        model = torchvision.models.get_model(self.name, weights=weights).eval()
        meta = weights.meta if weights is not None else {}
        transform = weights.transforms() if weights is not None else None
        mean = tuple(transform.mean) if transform is not None else (0.485, 0.456, 0.406)
        std = tuple(transform.std) if transform is not None else (0.229, 0.224, 0.225)
        size = transform.crop_size[0] if transform is not None else None
        crop = transform.crop_size[0] / transform.resize_size[0] if transform is not None else None
        interpolation = transform.interpolation.value if transform is not None else None
        categories = meta.get("categories") or []
        return Measurable(
            Standardized(model, mean, std).eval(),
            self.name,
            "torchvision",
            Preprocessing(size, crop, interpolation, 3),
            labels=imagenet_synsets(len(categories)) if categories else None,
            identity={"backbone": self.name, "strategy": "torchvision", "base_pipeline": "not recorded"},
            weights=str(weights) if weights is not None else "random",
        )


class ModuleFile(ModelSource):
    """Any ``nn.Module``: its class by its path (a dotted path, or ``FILE.py:Class``), built with
    ``module_args``, its weights from a state dict file. (Not ``class_path`` and ``init_args``:
    those name the model source itself in a config.)

    Args:
        module: ``package.module.Class``, or ``path/to/file.py:Class``.
        module_args: the class's arguments.
        weights: a state dict file (``torch.save``'d ``.pt``/``.pth``, or ``.safetensors``); None
            measures the module as built.
        mean: the per-channel mean it standardises images with (None: it takes images in [0, 1]).
        std: the per-channel standard deviation, likewise.
        image_size: the side it expects (None: it does not say).
        class_names: the class each output stands for (None: the data's classes, in order, when
            as many).
    """

    def __init__(
        self,
        module: str,
        module_args: dict[str, Any] | None = None,
        weights: str | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        image_size: int | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        self.module, self.module_args, self.weights = module, dict(module_args or {}), weights
        self.mean, self.std = mean, std
        self.image_size, self.class_names = image_size, class_names

    def _class(self) -> type:
        if ":" in self.module:
            file, _, name = self.module.rpartition(":")
            if not Path(file).is_file():
                raise SymtrainError(f"model.module file {file!r} does not exist: pass FILE.py:Class")
            spec = importlib.util.spec_from_file_location(Path(file).stem, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # for pickling and dataclasses in it
            spec.loader.exec_module(module)
        else:
            module_name, _, name = self.module.rpartition(".")
            try:
                module = importlib.import_module(module_name)
            except ImportError as error:
                raise SymtrainError(
                    f"cannot import {module_name!r} of model.module ({error}): pass an importable "
                    "package.module.Class or FILE.py:Class"
                ) from None
        found = getattr(module, name, None)
        if not (isinstance(found, type) and issubclass(found, nn.Module)):
            raise SymtrainError(f"model.module {self.module!r} names no nn.Module class")
        return found

    def load(self) -> Measurable:
        cls = self._class()
        try:
            model = cls(**self.module_args)
        except TypeError as error:
            raise SymtrainError(
                f"{cls.__name__}({self.module_args}): {error}: fix model.module_args"
            ) from None
        if self.weights is not None:
            model.load_state_dict(read_state_dict(self.weights, model))
        channels = None
        net: nn.Module = model
        if (self.mean is None) != (self.std is None):
            raise SymtrainError("pass both model.mean and model.std, or neither")
        if self.mean is not None:
            net = Standardized(model, tuple(self.mean), tuple(self.std))
            channels = len(self.mean)
        return Measurable(
            net.eval(),
            cls.__name__,
            "module",
            Preprocessing(image_size=self.image_size, channels=channels),
            labels=self.class_names,
            identity={"backbone": cls.__name__, "strategy": "module", "base_pipeline": "not recorded"},
            weights=self.weights or "as built",
        )


def read_state_dict(path: str, model: nn.Module) -> dict[str, Tensor]:
    """A state dict file that fits ``model`` (a checkpoint's ``state_dict`` or ``model`` entry
    is taken too).

    Raises:
        SymtrainError: when the file is missing, unreadable, or does not fit the model.
    """
    if not Path(path).is_file():
        raise SymtrainError(f"model.weights {path!r} does not exist: pass the state dict file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to read is the file's
        reason = " ".join(str(error).split())[:160]
        raise SymtrainError(f"model.weights {path!r} is not a state dict ({reason}): pass one") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise SymtrainError(f"model.weights {path!r} holds a {type(state).__name__}, not a state dict")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        first = (missing and f"missing {missing[0]!r}") or (unexpected and f"unexpected {unexpected[0]!r}")
        first = (
            first or f"{wrong[0]!r} is {tuple(state[wrong[0]].shape)}, not {tuple(expected[wrong[0]].shape)}"
        )
        raise SymtrainError(
            f"model.weights {path!r} does not fit {type(model).__name__} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} of another shape; {first}): check model.module_args"
        )
    return state
