"""The one exception type for user mistakes.

Anything a user can fix by changing a config, a flag or a file raises :class:`SymtrainError`
with a single readable line that names the problem and the fix. The CLI prints that line and
exits with code 2 instead of showing a traceback; :func:`one_line_error` turns the config
parser's nested messages into such a line.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any


class SymtrainError(Exception):
    """A user-fixable problem (bad config, missing data, unwritable directory).

    Examples:
        >>> str(SymtrainError("data.root 'x' does not exist: pass --data.root DIR"))
        "data.root 'x' does not exist: pass --data.root DIR"
    """


# The config keys that take a plugin, and the base class whose subclasses are its choices
# (imported when an error names one: this module stays free of torch).
_PLUGIN_BASES = {
    "backbone": ("symtrain.backbones", "Backbone"),
    "symmetry": ("symtrain.symmetry", "SymmetryStrategy"),
    "families": ("symtrain.transforms", "TransformFamily"),
    "data": ("symtrain.data", "ImageDataModule"),
    "model": ("symtrain.zoo", "ModelSource"),  # measure's model (fit's model is not a plugin)
}


# A class given where a subclass of one (or any of several) is expected.
_NOT_A_SUBCLASS = r"Expected '([\w.]+)' to be a subclass of (?:<class '(\w+)'>|Union\[([^\]]*)\])"
# The config keys that take a class from outside symtrain, and where their choices are.
_CHOICES_HINT = {
    "optimizer": ": choose a class of torch.optim (e.g. torch.optim.SGD) or timm.optim",
    "lr_scheduler": ": choose a class of torch.optim.lr_scheduler or timm.scheduler",
}


def _subclass_names(base: type) -> list[str]:
    names, stack = set(), [base]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if sub.__module__.startswith("symtrain.") and not sub.__name__.startswith("_"):
                names.add(sub.__name__)
    return sorted(names)


def _options_of(class_path: str) -> list[str]:
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        return []
    return [name for name in inspect.signature(cls).parameters if name not in ("self", "in_channels")]


def one_line_error(message: str) -> str:
    r"""Condense a (nested, multi-line) jsonargparse error into one line naming the full key,
    what is wrong, and the valid choices where there is a list of them.

    Examples:
        >>> one_line_error('Parser key "model.lr":\n  Expected a <class \'float\'>. Got value: x')
        "model.lr: expected float, got 'x'"
        >>> one_line_error('Parser key "model.backbone":\n  - Expected a dot import path string: Foo')[:66]
        "model.backbone: unknown class 'Foo' (valid choices: AntialiasedCNN"
    """
    key = ""
    for part in re.findall(r'Parser key "([^"]+)"', message):
        key = part if part.startswith(key) else f"{key}.{part}" if key else part
    prefix = f"{key}: " if key else ""
    if ambiguous := re.search(r"Multiple subclasses with name (\w+)\. .*?: ([\w.]+)", message):
        name, first = ambiguous.groups()
        return f"{prefix}{name} names several classes: give its full class path, e.g. {first}"
    if wrong := re.search(_NOT_A_SUBCLASS, message):
        base = wrong.group(2) or f"any of {wrong.group(3)}"
        hint = _CHOICES_HINT.get(key.rpartition(".")[2], "")
        return f"{prefix}{wrong.group(1)} is not a subclass of {base}{hint}"
    if unknown := re.search(r"(?:dot import path string|Import path):? (\S+)", message):
        base = _PLUGIN_BASES.get(key.rpartition(".")[2])
        if base is not None:
            base = getattr(importlib.import_module(base[0]), base[1])
        choices = f" (valid choices: {', '.join(_subclass_names(base))})" if base else ""
        return f"{prefix}unknown class {unknown.group(1)!r}{choices}"
    if option := re.search(r"Option '(\w+)' is not accepted", message):
        owner = re.search(r"class_path='([\w.]+)'", message)
        options = _options_of(owner.group(1)) if owner else []
        valid = f" (options: {', '.join(options)})" if options else ""
        return f"{prefix}no option {option.group(1)!r}{valid}"
    if given := re.search(r"Given value: (.*)|Got value: (.*)", message):
        expected = re.findall(r"Expected an? (?:<class '(\w+)'>|(typing\.Literal\[[^\]]*\]))", message)
        kinds = [a or b.replace("typing.Literal", "one of ") for a, b in expected]
        # "or NoneType" only repeats that a key is optional; it never helps fix the value.
        kinds = " or ".join(dict.fromkeys(k for k in kinds if k != "NoneType" or len(set(kinds)) == 1))
        value = (given.group(1) or given.group(2)).strip()
        return f"{prefix}expected {kinds or 'another value'}, got {value!r}"
    lines = [line.strip(" -") for line in message.splitlines()]
    lines = [line for line in lines if line and not line.startswith("Parser key")]
    return prefix + (lines[-1] if lines else message.strip())


def error_line(mistake: BaseException) -> str:
    """The one line a user mistake is reported with. A mistake found in a DataLoader worker (an
    unreadable image) comes back re-raised with the worker's traceback in its message: its
    own message is that traceback's last line.

    Examples:
        >>> error_line(SymtrainError("cannot read image 'a.jpg': replace it"))
        "cannot read image 'a.jpg': replace it"
        >>> worker = ["Caught X in DataLoader worker process 0.", "Traceback:", "symtrain.errors.X: bad file"]
        >>> error_line(SymtrainError("\\n".join(worker)))
        'bad file'
    """
    lines = [line for line in str(mistake).strip().splitlines() if line.strip()]
    if not lines:
        return type(mistake).__name__
    if lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        return lines[-1].partition(": ")[2] or lines[-1]
    return lines[0]


def parse_arguments(parser: Any, args: list[str], as_dict: bool = True) -> Any:
    """``args`` parsed by ``parser`` (a jsonargparse ``ArgumentParser`` made with
    ``exit_on_error=False``), as a dict or the parser's namespace; a parser error becomes a
    one-line :class:`SymtrainError`."""
    from jsonargparse import ArgumentError

    try:
        parsed = parser.parse_args(args)
    except ArgumentError as error:
        raise SymtrainError(one_line_error(str(error))) from None
    return parsed.as_dict() if as_dict else parsed
