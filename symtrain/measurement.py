"""``python -m symtrain measure --config FILE``: measure a model trained anywhere.

The model is a symtrain run, a timm or torchvision model by name, or any ``nn.Module`` from a
file (:mod:`symtrain.zoo`); the data is any data module, whose evaluation preprocessing the
model's own data config fills where the data config leaves it open (None). The measures are the
callback's, by the same function (:func:`symtrain.metrics.measuring.measure`), on the same
seeded, class-stratified subset of the test split, streamed in batches; the upright score is
over the whole test split, when the data's classes map onto the model's outputs. The command
writes a run directory like ``test`` does (``config.yaml``, ``summary.json`` with the same keys,
``metrics.csv``, a wandb run in the same project), so ``report`` puts measured models beside
trained ones::

    python -m symtrain measure --config configs/measure/timm.yaml --data.root DIR
    python -m symtrain measure --model SymtrainRun --model.path runs/RUN --config configs/data/mnist5k.yaml
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from torch import Tensor
from torch.utils.data import DataLoader

from symtrain.clock import seconds_since_start
from symtrain.errors import SymtrainError, parse_arguments
from symtrain.metrics.base import Measure
from symtrain.runs import RunIdentity, RunOptions, create_run_dir, remove_run, to_jsonable, write_summary
from symtrain.study import model_label
from symtrain.zoo import Measurable, ModelSource

# The data module's evaluation settings that a model's own data config (its Preprocessing) fills
# where the data config leaves them None.
_FILLED = ("image_size", "crop_fraction", "interpolation", "channels")


def measure_parser() -> ArgumentParser:
    from symtrain.data import ImageDataModule
    from symtrain.metrics import EquivarianceMetrics

    parser = ArgumentParser(prog="python -m symtrain measure", description=__doc__, exit_on_error=False)
    parser.add_argument(
        "--config", action=ActionConfigFile, help="a measure config, e.g. configs/measure/timm.yaml"
    )
    parser.add_subclass_arguments(ModelSource, "model", required=True, help="the model to measure")
    parser.add_subclass_arguments(ImageDataModule, "data", required=True, help="the images to measure it on")
    parser.add_class_arguments(EquivarianceMetrics, "metrics", help="what to measure (as in fit configs)")
    parser.add_class_arguments(RunOptions, "run", help="how the run is named and tracked")
    parser.add_argument(
        "--labels",
        type=Literal["auto", "none"],
        default="auto",
        help="auto: score the model where the data's classes map onto its outputs; none: never",
    )
    parser.add_argument(
        "--precision",
        type=Literal["32", "bf16"],
        default="32",
        help="32, or bf16 (autocast: faster on recent GPUs; exactness figures then sit at bf16's rounding)",
    )
    parser.add_argument("--accelerator", type=Literal["auto", "cpu", "gpu", "mps"], default="auto")
    parser.add_argument("--root", type=str, default="runs", help="the directory the run directory goes in")
    return parser


def measure_main(args: list[str]) -> None:
    """Parse ``measure``'s arguments, measure, and write the run directory."""
    parser = measure_parser()
    config = parse_arguments(parser, args, as_dict=False)
    MeasureCommand(parser, config).run()


def _source(section: Namespace) -> ModelSource:
    """The model source a parsed ``model`` section names (its arguments are plain values)."""
    import importlib

    module_name, _, class_name = section.class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    init = section.get("init_args")
    return cls(**(init.as_dict() if isinstance(init, Namespace) else dict(init or {})))


def _device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator in ("mps", "auto") and torch.backends.mps.is_available():
        return torch.device("mps")
    if accelerator in ("gpu", "mps"):
        raise SymtrainError(f"--accelerator {accelerator}: no such device here; pass --accelerator cpu")
    return torch.device("cpu")


def label_mapping(
    model: Measurable, data: Any, task: str, outputs: int, labels: str
) -> tuple[Tensor | None, dict]:
    """The model's output index of each data class (None: no score), and how it was found or
    why it is absent (``summary.json``'s ``measured``); ``labels`` is ``measure``'s ``--labels``
    (``none``: no score)."""
    names = [str(n) for n in getattr(data, "class_names", [])]
    if labels == "none":
        return None, {"accuracy": None, "accuracy_absent": "labels: none"}
    if task == "segmentation":
        if not data.has_masks:
            return None, {
                "accuracy": None,
                "accuracy_absent": f"{data.name} has no masks to score against",
            }
        if outputs != len(names) + 1:
            reason = (
                f"the model has {outputs} per-pixel outputs and the data {len(names)} classes "
                "and the background"
            )
            return None, {"accuracy": None, "accuracy_absent": reason}
        return torch.arange(len(names)), {"accuracy": "by class index (background 0)"}
    if model.labels is not None:
        index = {label: i for i, label in enumerate(model.labels)}
        missing = [n for n in names if n not in index]
        if not missing:
            how = "by ImageNet synset" if outputs == 1000 and names[0].startswith("n") else "by class name"
            return torch.tensor([index[n] for n in names]), {"accuracy": how}
        kind = "ImageNet synsets" if outputs == 1000 else "class names"
        reason = (
            f"the data's class {missing[0]!r} is not among the model's {outputs} outputs ({kind}): "
            "the label-free measures are computed"
        )
        return None, {"accuracy": None, "accuracy_absent": reason}
    if outputs == len(names):
        return torch.arange(len(names)), {"accuracy": "in order (the model names no classes)"}
    reason = (
        f"the model has {outputs} outputs and names no classes, the data has {len(names)} classes: "
        "the label-free measures are computed"
    )
    return None, {"accuracy": None, "accuracy_absent": reason}


class MeasureCommand:
    """One ``measure``: the model, the data, the measures, and the run directory they fill."""

    def __init__(self, parser: ArgumentParser, config: Namespace) -> None:
        self.parser, self.config = parser, config
        self.options = RunOptions(**config.run.as_dict())
        self.device = _device(config.accelerator)

    def run(self) -> Path:
        from symtrain.metrics.measuring import probe

        torch.manual_seed(self.config.metrics.seed)  # a randomly initialised model is the same every time
        model: Measurable = _source(self.config.model).load()
        model.net.to(self.device).eval()
        data = self._data(model)
        channels, size = data.in_channels, data.image_size
        task, outputs = probe(model.net, torch.zeros(1, channels, size, size, device=self.device))
        if task == "segmentation" and data.has_masks:
            data.with_masks = True
        mapping, accuracy = label_mapping(model, data, task, outputs, self.config.labels)
        chosen = self._chosen(model, task, mapping is not None, size)  # refused before anything is written
        identity = RunIdentity(
            backbone=model.identity.get("backbone", model.name),
            strategy=model.identity.get("strategy", model.source),
            dataset=data.name,
            seed=self.config.metrics.seed,
            task=task,
            approach=self.options.approach or model.name,
        )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = self.options.name or f"{model_label(model.name)}-{data.name}-measure-{stamp}"
        run_dir = create_run_dir(self.config.root, name)
        try:
            return self._measure_into(
                run_dir, model, data, task, outputs, mapping, accuracy, identity, chosen
            )
        except BaseException:
            remove_run(run_dir)  # nothing half-written is left to look like a measured model
            raise

    def _chosen(self, model: Measurable, task: str, labelled: bool, size: int) -> list[Measure]:
        """The measures to run. Without labels that map, the scores are left out (a line says
        why); a measure that needs what the model lacks (stages) is left out of the defaults,
        and refused when named, as is a family the images cannot carry.

        Raises:
            SymtrainError: for a named measure the model cannot give, or a family too large.
        """
        from symtrain.metrics.base import stages_of
        from symtrain.metrics.measuring import check_families, choose

        callback = self.callback
        have = {"labels"} if labelled else set()
        have |= {"stages"} if stages_of(model.net) is not None else set()
        named = callback.measures is not None
        keys = [
            m.key
            for m in callback.chosen(task)
            if (labelled or "labels" not in m.needs) and (named or m.needs <= have)
        ]
        check_families(callback.families, size, size)
        return choose(task, keys, callback.settings, "test", labelled, "stages" in have)

    def _data(self, model: Measurable) -> Any:
        """The data module, its evaluation preprocessing filled from the model's data config
        where the data config leaves it open."""
        section = self.config.data
        init = section.get("init_args") or Namespace()
        wanted = asdict(model.preprocessing)
        for key in _FILLED:
            if key in init and init[key] is None and wanted[key] is not None:
                init[key] = wanted[key]
        section.init_args = init
        built = self.parser.instantiate_classes(self.config)
        data, self.callback = built.data, built.metrics
        if data.image_size is None:
            raise SymtrainError(
                f"{model.name} does not say its input size and the data keeps its images' own: "
                "pass --data.image_size SIZE"
            )
        return data

    def _loader(
        self, split: Any, mapping: Tensor | None, task: str, data: Any, count: int | None
    ) -> DataLoader:
        """The split (its measured subset of ``count`` images, or all of it) in batches of
        (images uint8, targets in the model's indexing), or (images,) without a mapping."""
        from symtrain.metrics.subset import stratified_subset

        if count is not None:
            split = split.subset(stratified_subset(split.labels, count, self.config.metrics.seed))
        dataset, collate = split.dataset(None, data.with_masks)
        segmentation = task == "segmentation"

        def relabel(items: Any) -> tuple[Tensor, ...]:
            batch = collate(items)
            if mapping is None:
                return (batch[0],)
            return (batch[0], batch[2] if segmentation else mapping[batch[1]])

        size = self.config.metrics.batch_size or (64 if self.device.type == "cpu" else 256)
        size = size if count is not None else data.batch_size
        workers = data.num_workers
        return DataLoader(dataset, batch_size=size, num_workers=workers, collate_fn=relabel)

    def _measure_into(
        self,
        run_dir: Path,
        model: Measurable,
        data: Any,
        task: str,
        outputs: int,
        mapping: Tensor | None,
        accuracy: dict,
        identity: RunIdentity,
        chosen: list[Measure],
    ) -> Path:
        from symtrain.metrics.measuring import curve_points, measure
        from symtrain.tracking import finish_tracking, run_loggers

        if mapping is None:
            sys.stderr.write(f"symtrain: no accuracy: {accuracy['accuracy_absent']}\n")
        callback = self.callback
        data.setup("test")
        split = data.splits[data.test_split if data.test_split in data.splits else "test"]
        count = min(callback.test_num_samples, len(split))
        described = data.describe()
        loggers = run_loggers(run_dir, self.options, identity, model.params, described)
        seconds: dict[str, float] = {}
        clock = time.perf_counter()
        values = measure(
            model.net,
            self._loader(split, mapping, task, data, count),
            callback.families,
            [m.key for m in chosen],
            settings=callback.settings,
            stage="test",
            device=self.device,
            precision=self.config.precision,
        )
        seconds["measure_test"] = time.perf_counter() - clock
        if mapping is not None:
            clock = time.perf_counter()
            loader = self._loader(split, mapping, task, data, None)
            values.update(upright_scores(model, loader, task, outputs, self.device, self.config.precision))
            seconds["test"] = time.perf_counter() - clock
        curves = {}
        for curve in (m for m in chosen if m.key == "curve"):
            curves.update(
                curve_points(values, "test", curve.axes, "miou" if task == "segmentation" else "acc")
            )
        logged = {k: v for k, v in values.items() if "/curve/" not in k}  # the curves go as tables
        recorded = {key: value for key, value in self.config.as_dict().items() if key != "config"}
        for logger in loggers:
            logger.log_hyperparams(recorded)  # the measure config, as a run's hparams
            logger.log_metrics(logged, step=0)
            logger.save()
        from symtrain.artefacts import log_curves

        log_curves(loggers, curves)
        for logger in loggers:
            logger.finalize("success")
        if (elapsed := seconds_since_start()) is not None:
            seconds["elapsed"] = elapsed
        summary = {
            "run_name": run_dir.name,
            **identity.as_dict(),
            "base_pipeline": model.identity.get("base_pipeline", "not recorded"),
            "params": model.params,
            "fit_seconds": None,
            "seconds": {part: round(value, 3) for part, value in seconds.items()},
            "metrics": to_jsonable(logged),
            "curves": curves,
            "measures": [m.describe() for m in chosen],
            "families": [family.name for family in callback.families],
            "data": described,
            "checkpoints": {"best": None, "last": None},
            **({"recipe": model.recipe} if model.recipe is not None else {}),
            "measured": {
                "source": model.source,
                "model": model.name,
                "weights": model.weights,
                "preprocessing": asdict(model.preprocessing),
                "precision": self.config.precision,
                "device": self.device.type,
                "subset": count,
                **accuracy,
            },
        }
        # config.yaml after the CSV logger's first write (it warns of a directory not empty).
        self.parser.save(self.config, run_dir / "config.yaml", skip_none=False, overwrite=True)
        write_summary(run_dir, summary)
        finish_tracking()
        if not self.options.quiet:
            print(f"measured {model.name} on {count} images of {data.name}: {run_dir}")
            print(digest(logged, [family.name for family in callback.families]))
        return run_dir


def upright_scores(
    model: Measurable, loader: DataLoader, task: str, outputs: int, device: torch.device, precision: str
) -> dict[str, float]:
    """The upright loss and scores over the whole test split, as a run's test step logs them.

    The loss is a mean over images of each batch's loss, in batches of the data's batch size.

    Args:
        model: The measured model.
        loader: The whole test split in batches of (images, targets in the model's indexing).
        task: ``classification`` or ``segmentation``.
        outputs: The model's outputs (per image or per pixel).
        device: Where the model and the metrics run.
        precision: ``measure``'s ``--precision`` (``32`` or ``bf16``).

    Returns:
        ``test/loss`` and the task's scores (``test/acc``, ...).
    """
    from torchmetrics import MeanMetric

    from symtrain.metrics.measuring import autocast, on_device
    from symtrain.tasks import TASKS

    scores = {name: metric.to(device) for name, metric in TASKS[task]().scores(outputs).items()}
    loss = MeanMetric(nan_strategy="disable").to(device)
    with torch.inference_mode(), autocast(device, precision):
        for images, targets in on_device(loader, device):
            logits = model.net(images).float()
            loss.update(model.loss(logits, targets).expand(len(targets)))
            for metric in scores.values():
                metric.update(logits, targets)
    values = {"test/loss": float(loss.compute())}
    values.update({f"test/{name}": float(metric.compute()) for name, metric in scores.items()})
    return values


def digest(values: dict[str, float], families: list[str]) -> str:
    """The main figures of a measurement, a few lines for the terminal (``summary.json`` has all).

    Examples:
        >>> print(digest({"test/acc": 0.5, "test/equiv/rot90/consistency": 1.0, "test/lie/rotation": 0.01},
        ...              ["rot90"]))
          upright: acc 0.5
          rot90: consistency 1
          Lie derivative: rotation 0.01
    """
    lines = []
    upright = {k.split("/")[1]: v for k, v in values.items() if k.count("/") == 1}
    if upright:
        lines.append("  upright: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(upright.items())))
    for family in families:
        marker = f"test/equiv/{family}/"
        own = {
            k[len(marker) :]: v
            for k, v in values.items()
            if k.startswith(marker) and "/" not in k[len(marker) :]
        }
        if own:
            lines.append(f"  {family}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(own.items())))
    for group, title in (("lie", "Lie derivative"), ("diffeo", "stability")):
        own = {
            k.split("/")[2]: v
            for k, v in values.items()
            if k.startswith(f"test/{group}/") and k.count("/") == 2
        }
        if own:
            lines.append(f"  {title}: " + ", ".join(f"{k} {v:.4g}" for k, v in own.items()))
    return "\n".join(lines)
