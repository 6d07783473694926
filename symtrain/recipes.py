"""Training recipes: which optimizer and learning-rate schedule a run trains with.

:class:`~symtrain.module.SymmetryModule` trains with AdamW and a one-cycle schedule unless a
config injects another optimizer or scheduler (``model.optimizer``, ``model.lr_scheduler``: any
``torch.optim`` class, or timm's, chosen by ``class_path``, LightningCLI's dependency injection).
This module holds what that needs besides the module itself: the types the config is checked
against, the parameter groups that leave norms and biases out of weight decay, the checks that
turn a scheduler that would fail mid-training into a one-line error before it starts, and the
description of a recipe that ``summary.json``, wandb and the report record.
"""

from __future__ import annotations

import abc
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR, ReduceLROnPlateau

from symtrain.errors import SymtrainError

# What the default recipe means by lr=None and weight_decay=None.
DEFAULT_LR = 3e-3
DEFAULT_WEIGHT_DECAY = 1e-4
# What ReduceLROnPlateau watches: the metric the best checkpoint is chosen by.
PLATEAU_MONITOR = "val/loss"


class UpdateCountScheduler(abc.ABC):
    """A scheduler with timm's interface (``timm.scheduler.CosineLRScheduler`` and the others):
    ``step(epoch)`` at the end of an epoch with the number of epochs done, ``step_update(num_updates)``
    after an optimizer step with the number of updates done, and a state dict. Not a torch
    ``LRScheduler``: :meth:`SymmetryModule.lr_scheduler_step` drives it.

    A class is one by its methods (``issubclass`` checks them), so the config can name timm's
    schedulers without symtrain importing timm up front (a second of start-up).

    Examples:
        >>> from torch.optim.lr_scheduler import StepLR
        >>> issubclass(StepLR, UpdateCountScheduler)
        False
        >>> class Timmish:
        ...     def step(self, epoch, metric=None): ...
        ...     def step_update(self, num_updates, metric=None): ...
        ...     def state_dict(self): ...
        ...     def load_state_dict(self, state_dict): ...
        >>> issubclass(Timmish, UpdateCountScheduler)
        True
    """

    @abc.abstractmethod
    def step(self, epoch: int, metric: float | None = None) -> None:
        """Set the learning rate for epoch ``epoch`` (the number of epochs done)."""

    @abc.abstractmethod
    def step_update(self, num_updates: int, metric: float | None = None) -> None:
        """Set the learning rate for the update after ``num_updates`` updates."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of it."""

    @abc.abstractmethod
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore it from a checkpoint."""

    @classmethod
    def __subclasshook__(cls, other: type) -> bool:
        if cls is UpdateCountScheduler:
            return all(callable(getattr(other, name, None)) for name in cls.__abstractmethods__)
        return NotImplemented


# LightningCLI's OptimizerCallable, and its LRSchedulerCallable widened to timm's schedulers.
OptimizerCallable = Callable[[Iterable], Optimizer]
# (typing.Union: jsonargparse resolves short class names, e.g. ReduceLROnPlateau, in every member
# of a Union but only in the first of an ``X | Y``.)
LRSchedulerCallable = Callable[[Optimizer], Union[LRScheduler, ReduceLROnPlateau, UpdateCountScheduler]]  # noqa: UP007

# Normalisation layers by class name, for those that are not torch's own classes (escnn's
# InnerBatchNorm, IIDBatchNorm2d, NormBatchNorm, FieldNorm): not NormNonLinearity or NormPool.
_NORM_NAME = re.compile(r"Norm(\dd)?$")
_TORCH_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)


def no_decay_parameters(module: nn.Module) -> set[str]:
    """Names of the parameters that timm's recipes leave out of weight decay: biases, and the
    scales and shifts of normalisation layers.

    timm's own rule (``create_optimizer_v2(..., filter_bias_and_bn=True)``) is "every parameter
    with one dimension", which would also exempt every escnn weight (a vector of basis
    coefficients); this rule asks the layers instead.

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1, bias=False))
        >>> sorted(no_decay_parameters(net))
        ['0.bias', '1.bias', '1.weight']
    """
    names = set()
    for module_name, layer in module.named_modules():
        is_norm = isinstance(layer, _TORCH_NORMS) or bool(_NORM_NAME.search(type(layer).__name__))
        for name, _ in layer.named_parameters(recurse=False):
            if is_norm or name == "bias":
                names.add(f"{module_name}.{name}" if module_name else name)
    return names


def parameter_groups(module: nn.Module, decay_norms_and_biases: bool) -> Iterable:
    """What the optimizer is given: the module's trainable parameters, in one group, or, with
    ``decay_norms_and_biases=False``, two: the rest, and biases and norms with weight decay 0
    (which overrides the optimizer's own ``weight_decay`` for them, whatever the optimizer)."""
    if decay_norms_and_biases:
        return module.parameters()  # one group, as every run trained before this option
    exempt = no_decay_parameters(module)
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    return [
        {"params": [p for name, p in named if name not in exempt]},
        {"params": [p for name, p in named if name in exempt], "weight_decay": 0.0},
    ]


def describe(factory: Callable[..., Any], saved: Any) -> dict[str, Any]:
    """An injected optimizer or scheduler as ``{"class_path", "init_args"}``: as the config gave
    it (``saved``, the module's hyperparameter, a dict when the CLI built the module), else from
    the callable itself (a ``functools.partial`` or a class, in Python).

    Examples:
        >>> from torch.optim import SGD
        >>> describe(functools.partial(SGD, lr=0.1), None)
        {'class_path': 'torch.optim.sgd.SGD', 'init_args': {'lr': 0.1}}
    """
    if isinstance(saved, Mapping) and "class_path" in saved:
        return {"class_path": saved["class_path"], "init_args": dict(saved.get("init_args") or {})}
    target, init_args = factory, {}
    if isinstance(factory, functools.partial):
        target, init_args = factory.func, dict(factory.keywords)
    name = getattr(target, "__qualname__", type(target).__qualname__)
    return {"class_path": f"{target.__module__}.{name}", "init_args": init_args}


def short_name(class_path: str) -> str:
    """``torch.optim.SGD`` -> ``SGD``."""
    return class_path.rpartition(".")[2]


def recipe_of(
    hparams: Mapping[str, Any],
    optimizer: Callable[..., Any] | None = None,
    lr_scheduler: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """The recipe a module's hyperparameters choose: ``optimizer`` and ``lr_scheduler`` (each
    ``{"class_path", "init_args"}``, or for the default's schedule ``onecycle`` or ``constant``),
    ``lr_interval`` and ``decay_norms_and_biases``. ``optimizer`` and ``lr_scheduler`` are the
    injected callables where the module has them (else the hyperparameters' own entries).

    Examples:
        >>> recipe_of({"lr": None, "lr_schedule": None})["optimizer"]
        {'class_path': 'torch.optim.AdamW', 'init_args': {'lr': 0.003, 'weight_decay': 0.0001}}
        >>> recipe_of({"optimizer": {"class_path": "torch.optim.SGD"}})["lr_scheduler"]
        'constant'
    """
    optimizer = optimizer if optimizer is not None else hparams.get("optimizer")
    lr_scheduler = lr_scheduler if lr_scheduler is not None else hparams.get("lr_scheduler")
    if optimizer is None:
        lr, weight_decay = hparams.get("lr"), hparams.get("weight_decay")
        settings = {
            "lr": DEFAULT_LR if lr is None else lr,
            "weight_decay": DEFAULT_WEIGHT_DECAY if weight_decay is None else weight_decay,
        }
        described: dict[str, Any] = {"class_path": "torch.optim.AdamW", "init_args": settings}
    else:
        described = describe(optimizer, hparams.get("optimizer"))
    schedule: Any
    if lr_scheduler is not None:
        schedule, interval = describe(lr_scheduler, hparams.get("lr_scheduler")), hparams.get("lr_interval")
        interval = interval or "epoch"
    elif optimizer is None and (hparams.get("lr_schedule") or "onecycle") == "onecycle":
        schedule, interval = "onecycle", "step"
    else:
        schedule, interval = "constant", None
    return {
        "optimizer": described,
        "lr_scheduler": schedule,
        "lr_interval": interval,
        "decay_norms_and_biases": hparams.get("decay_norms_and_biases", True),
    }


def recipe_outline(hparams: Mapping[str, Any]) -> str:
    """The optimizer and schedule that a module's hyperparameters choose, in words (what a resumed
    fit must keep).

    Examples:
        >>> recipe_outline({"lr": 3e-3, "weight_decay": 1e-4, "lr_schedule": "onecycle"})  # before injection
        'AdamW + onecycle'
        >>> recipe_outline({"optimizer": {"class_path": "torch.optim.SGD"}})
        'SGD + constant'
    """
    recipe = recipe_of(hparams)
    schedule = recipe["lr_scheduler"]
    schedule = schedule if isinstance(schedule, str) else short_name(schedule["class_path"])
    return f"{short_name(recipe['optimizer']['class_path'])} + {schedule}"


def check_optimizer(optimizer: Any, name: str) -> None:
    """A one-line error unless ``optimizer`` is a torch optimizer (what Lightning steps)."""
    if not isinstance(optimizer, Optimizer):
        raise SymtrainError(
            f"model.optimizer {name} made a {type(optimizer).__name__}, not a torch optimizer: choose a "
            "class of torch.optim (e.g. class_path: torch.optim.SGD) or timm.optim"
        )


def check_scheduler(
    scheduler: Any, name: str, interval: str, stepping_batches: float, max_epochs: int | None, validates: bool
) -> None:
    """One-line errors, before training starts, for an injected scheduler that would fail or do
    nothing once it runs.

    Args:
        scheduler: the scheduler built on the optimizer.
        name: its class, as the message names it.
        interval: ``epoch`` or ``step``: when Lightning steps it.
        stepping_batches: the optimizer steps this fit takes (``trainer.estimated_stepping_batches``).
        max_epochs: the epochs this fit takes (``trainer.max_epochs``).
        validates: whether the fit validates (so ``val/loss`` exists for a plateau scheduler).

    Raises:
        SymtrainError: a scheduler that is not one, a plateau scheduler with nothing to watch or
            stepped per step, a timm scheduler counting in the other unit than ``interval``, a
            one-cycle schedule shorter than the fit (torch raises when stepped past its end).
    """
    if not isinstance(scheduler, (LRScheduler, ReduceLROnPlateau, UpdateCountScheduler)):
        raise SymtrainError(
            f"model.lr_scheduler {name} made a {type(scheduler).__name__}, not a learning-rate scheduler: "
            "choose a class of torch.optim.lr_scheduler or timm.scheduler"
        )
    if isinstance(scheduler, ReduceLROnPlateau):
        if not validates:
            raise SymtrainError(
                f"model.lr_scheduler {name} steps on {PLATEAU_MONITOR} but this fit does not validate "
                "(trainer.limit_val_batches 0): let it validate, or choose a scheduler that needs no metric"
            )
        if interval == "step":
            raise SymtrainError(
                f"model.lr_scheduler {name} steps on {PLATEAU_MONITOR}, which is measured once per epoch: "
                "set model.lr_interval epoch"
            )
    if isinstance(scheduler, UpdateCountScheduler):
        # timm's scheduler ignores the calls of the other unit: the lr would never move.
        counts_epochs = getattr(scheduler, "t_in_epochs", interval == "epoch")
        if counts_epochs != (interval == "epoch"):
            fix = (
                "set model.lr_scheduler.init_args.t_in_epochs false (t_initial, warmup_t in steps)"
                if interval == "step"
                else "set model.lr_interval step"
            )
            raise SymtrainError(
                f"model.lr_scheduler {name} counts in {'epochs' if counts_epochs else 'steps'} "
                f"(t_in_epochs {str(counts_epochs).lower()}) but model.lr_interval is {interval}: {fix}"
            )
    if isinstance(scheduler, OneCycleLR):
        steps = stepping_batches if interval == "step" else max_epochs
        if steps is not None and scheduler.total_steps < steps:
            unit = "steps (trainer.estimated_stepping_batches)" if interval == "step" else "epochs"
            raise SymtrainError(
                f"model.lr_scheduler {name} plans {scheduler.total_steps} {interval}s but this fit takes "
                f"{int(steps)} {unit}, and torch stops at its end: set "
                f"model.lr_scheduler.init_args.total_steps {int(steps)}, or the trainer's length to match"
            )
