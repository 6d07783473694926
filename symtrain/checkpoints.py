"""Checkpoint files: written atomically, read safely, checked against the model before loading.

- :class:`AtomicCheckpointIO` is the trainer's checkpoint plugin: a process killed at any moment
  while saving leaves the previous checkpoint in place, and loading never runs code from a file.
- :func:`read_checkpoint` is the same safe load, for use outside the trainer.
- :func:`check_checkpoint_fits` says in one line which configuration a checkpoint was trained
  with when its weights do not fit the model at hand.

Every failure is a :class:`~symtrain.errors.SymtrainError` whose one line names the file and
the fix, e.g.::

    cannot read checkpoint 'runs/x/checkpoints/last.ckpt': the file is truncated or not a
    checkpoint (PytorchStreamReader failed reading zip archive: failed finding central
    directory): use another checkpoint, e.g. the run's checkpoints/best.ckpt
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _load as lightning_load
from lightning.fabric.utilities.cloud_io import get_filesystem

from symtrain.errors import SymtrainError

# Checkpoints being written live in this hidden folder beside their final place, under their
# final name, until they are complete. Not "<name>.partial" beside the final file: Lightning
# finds SLURM requeue checkpoints by listing names that *contain* "hpc_ckpt_" and would take a
# leftover "hpc_ckpt_3.ckpt.partial" for version 3, then resume from a file that never existed.
PARTIAL_DIR = ".partial"

_ANOTHER_CHECKPOINT = "use another checkpoint, e.g. the run's checkpoints/best.ckpt"
_TRAINED_CONFIG = "pass the config it was trained with (its run's config.yaml) or another checkpoint"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint plugin, with atomic, durable saving and safe loading.

    Saving writes ``<dir>/.partial/<name>``, flushes it to disk, then renames it onto
    ``<dir>/<name>``: a process killed at any moment (SIGKILL, out of memory, a node lost)
    leaves either the previous checkpoint or the new one, never half of one. A file left in
    ``.partial/`` by such a kill is harmless and overwritten by the next save.

    Loading always uses ``torch.load(weights_only=True)``: tensors and plain values only, so a
    tampered checkpoint cannot run code. Failures become one-line :class:`SymtrainError` s.

    Examples:
        >>> import tempfile
        >>> io = AtomicCheckpointIO()
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     io.save_checkpoint({"step": 3, "w": torch.ones(2)}, f"{tmp}/checkpoints/last.ckpt")
        ...     print(io.load_checkpoint(f"{tmp}/checkpoints/last.ckpt"))
        ...     print(sorted(os.listdir(f"{tmp}/checkpoints")))
        {'step': 3, 'w': tensor([1., 1.])}
        ['last.ckpt']
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        """Save ``checkpoint`` to ``path`` so that ``path`` always holds a whole checkpoint.

        Args:
            checkpoint: the trainer's state (anything :func:`torch.save` accepts).
            path: the final file; missing parent directories are made.
            storage_options: not supported (as in Lightning's ``TorchCheckpointIO``).

        Raises:
            SymtrainError: if the file cannot be written (no space, no permission).
        """
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support `storage_options`")
        if not isinstance(get_filesystem(path), LocalFileSystem):
            # Object stores have no rename; their upload commits a whole object at once, which
            # is Lightning's own (transactional) save.
            super().save_checkpoint(checkpoint, path)
            return
        # Lightning's _atomic_save is not enough: it serialises to memory (the whole checkpoint
        # twice in RAM), then writes inside an fsspec transaction, which for local files writes
        # a temporary file in the *system* temp directory and shutil.move-s it into place. That
        # is a rename only when /tmp is on the same file system; on a cluster (local /tmp,
        # shared runs/) it is a copy into the final file in place, so a kill during the copy
        # truncates it. It never fsyncs, and a full /tmp fails checkpoints that would fit.
        path = Path(LocalFileSystem._strip_protocol(str(path)))
        partial_dir = path.parent / PARTIAL_DIR
        partial = partial_dir / path.name
        try:
            partial_dir.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())  # the bytes are on disk before the name points at them
            os.replace(partial, path)  # atomic on POSIX and Windows, on the same file system
            _fsync_dir(path.parent)  # and the rename itself survives a power loss
        except BaseException as error:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            if not isinstance(error, OSError):
                raise
            raise SymtrainError(
                f"cannot write checkpoint '{path}' ({error.strerror or _one_line(error)}): "
                "free some space or choose a writable --trainer.default_root_dir"
            ) from None
        finally:
            # Lightning saves one checkpoint at a time (AsyncCheckpointIO too: one worker
            # thread), so no other save can be using the folder when it is found empty.
            with contextlib.suppress(OSError):
                partial_dir.rmdir()

    def load_checkpoint(
        self,
        path: str | os.PathLike,
        map_location: Any | None = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load a checkpoint with ``weights_only=True``, whatever ``weights_only`` says.

        Args:
            path: the checkpoint file (local, or any URL Lightning can read).
            map_location: where tensors go, as in :func:`torch.load`; ``None`` keeps them on
                the CPU, as Lightning's own plugin does (a GPU checkpoint resumes on any host).
            weights_only: ignored: loading is always safe. What `symtrain fit` saves holds only
                tensors and plain values, so none of it needs unsafe loading.

        Raises:
            SymtrainError: one line naming the file, saying whether it is missing, truncated
                or not a checkpoint, or holds objects that safe loading refuses.
        """
        return read_checkpoint(path, map_location="cpu" if map_location is None else map_location)


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint file safely (``weights_only=True``), with a one-line error if it fails.

    Args:
        path: the checkpoint file.
        map_location: where tensors go, as in :func:`torch.load`.

    Returns:
        The checkpoint's dictionary (``state_dict``, ``hyper_parameters``, ...).

    Raises:
        SymtrainError: if the file is missing, truncated, not a checkpoint, or holds Python
            objects that safe loading refuses.

    Examples:
        >>> import tempfile
        >>> tmp = Path(tempfile.mkdtemp())
        >>> torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp / "a.ckpt")
        >>> read_checkpoint(tmp / "a.ckpt")
        {'state_dict': {'w': tensor([0.])}}
        >>> _ = (tmp / "notes.txt").write_text("not a checkpoint")
        >>> read_checkpoint(tmp / "notes.txt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        symtrain.errors.SymtrainError: cannot read checkpoint '.../notes.txt': the file is truncated or not a checkpoint (it is not a zip archive or a pickle): use another checkpoint, e.g. the run's checkpoints/best.ckpt
        >>> read_checkpoint(tmp / "b.ckpt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        symtrain.errors.SymtrainError: checkpoint '.../b.ckpt' does not exist: pass a .ckpt file or a run directory
        >>> import shutil
        >>> shutil.rmtree(tmp)
    """  # noqa: E501
    fs = get_filesystem(path)
    local = isinstance(fs, LocalFileSystem)
    name = LocalFileSystem._strip_protocol(str(path)) if local else str(path)
    if not fs.exists(name):
        raise SymtrainError(f"checkpoint '{name}' does not exist: pass a .ckpt file or a run directory")
    try:
        file = open(name, "rb") if local else None
    except OSError as error:  # a directory, no permission: the file system's own words say it
        raise _cannot_open(name, error) from None
    try:
        with warnings.catch_warnings():
            # torch's note on unusual pickle protocols, which any non-checkpoint file triggers.
            warnings.filterwarnings("ignore", message=r".*Detected pickle protocol.*")
            if file is None:
                checkpoint = lightning_load(name, map_location=map_location, weights_only=True)
            else:
                with file:
                    checkpoint = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_object(str(error))
        if refused is None:
            raise _unreadable(name, _torch_reason(str(error), name if local else None)) from None
        raise SymtrainError(
            f"checkpoint '{name}' holds Python objects that safe loading refuses ({refused}): only load "
            "checkpoints you trust; `symtrain fit` writes only tensors and plain values, so use one of its "
            "checkpoints, or load this one with the code that wrote it"
        ) from None
    except MemoryError:
        raise
    except Exception as error:  # a bad file: RuntimeError, EOFError, KeyError, even OSError(EINVAL)
        if isinstance(error, OSError) and not local:
            raise _cannot_open(name, error) from None  # the network, not the file
        raise _unreadable(name, _torch_reason(str(error), name if local else None, error)) from None
    if not isinstance(checkpoint, dict):
        raise _unreadable(name, f"it holds a {type(checkpoint).__name__}, not a dictionary")
    return checkpoint


def check_checkpoint_fits(
    checkpoint: Mapping[str, Any], module: torch.nn.Module, path: str | os.PathLike
) -> None:
    """Raise a one-line error if the checkpoint's weights do not fit ``module``.

    Compares the names and shapes in the checkpoint's ``state_dict`` with ``module.state_dict()``
    (what a strict ``load_state_dict`` needs), leaving out what the module's backbone caches from
    its weights (``without_cache``: escnn's expanded filters exist in eval mode only). The message names the backbone the checkpoint was trained
    with, from its ``hyper_parameters``, against the one ``module`` builds.

    Args:
        checkpoint: a checkpoint as :func:`read_checkpoint` returns it.
        module: the LightningModule the weights are meant for (e.g. a ``SymmetryModule``).
        path: the checkpoint's file, named in the message.

    Raises:
        SymtrainError: if a weight is missing, unexpected or of another shape.

    Examples:
        >>> from functools import partial
        >>> from symtrain.backbones import StandardCNN
        >>> from symtrain.module import SymmetryModule
        >>> narrow = SymmetryModule(partial(StandardCNN, width=4, depth=1), num_classes=3)
        >>> wide = SymmetryModule(partial(StandardCNN, width=8, depth=1), num_classes=3)
        >>> checkpoint = {"state_dict": narrow.state_dict(), "hyper_parameters": dict(narrow.hparams)}
        >>> check_checkpoint_fits(checkpoint, narrow, "narrow.ckpt")
        >>> check_checkpoint_fits(checkpoint, wide, "narrow.ckpt")
        Traceback (most recent call last):
        ...
        symtrain.errors.SymtrainError: checkpoint 'narrow.ckpt' was trained with backbone StandardCNN(width=4) but this run builds StandardCNN(width=8): pass the config it was trained with (its run's config.yaml) or another checkpoint
    """  # noqa: E501
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        raise SymtrainError(
            f"checkpoint '{path}' holds no state_dict, so it was not saved by a Lightning trainer: "
            f"{_ANOTHER_CHECKPOINT}"
        )
    if hasattr(module, "without_stale_state"):  # what the module itself drops on loading
        state = module.without_stale_state(state)
    wanted = module.state_dict()
    if hasattr(module, "without_cache"):  # what the backbone caches from its weights
        state, wanted = module.without_cache(state), module.without_cache(wanted)
    saved, wanted = _shapes(state), _shapes(wanted)
    missing = [key for key in wanted if key not in saved]
    unexpected = [key for key in saved if key not in wanted]
    reshaped = [key for key in wanted if key in saved and saved[key] != wanted[key]]
    if not (missing or unexpected or reshaped):
        return
    trained = _architecture(checkpoint.get("hyper_parameters"))
    built = _architecture(getattr(module, "hparams", None))
    if trained and built and trained != built:
        was, now = _describe_difference(trained, built)
        raise SymtrainError(
            f"checkpoint '{path}' was trained with {was} but this run builds {now}: {_TRAINED_CONFIG}"
        )
    details = [f"missing {key}" for key in missing[:2]] + [f"unexpected {key}" for key in unexpected[:2]]
    details += [f"{key} is {list(saved[key])} there, {list(wanted[key])} here" for key in reshaped[:2]]
    more = len(missing) + len(unexpected) + len(reshaped) - len(details)
    summary = "; ".join(details) + (f"; {more} more" if more > 0 else "")
    if trained and trained == built:
        # Same config, different weights: the model's code changed since the checkpoint.
        raise SymtrainError(
            f"checkpoint '{path}' does not fit the model its own config builds ({summary}): it was "
            "written by another version of symtrain; use that version or retrain"
        )
    raise SymtrainError(f"checkpoint '{path}' does not fit this model ({summary}): {_TRAINED_CONFIG}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its rename is durable enough
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and platforms) refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def _one_line(error: BaseException | str, limit: int = 160) -> str:
    """Whitespace collapsed, long text cut.

    Examples:
        >>> _one_line("a\\n\\n  b " + "c" * 200, limit=12)
        'a b ccccc...'
    """
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _refused_object(message: str) -> str | None:
    """What safe loading refused, or None if the failure was not about a refused object.

    Examples:
        >>> _refused_object("Unsupported global: GLOBAL functools.partial was not an allowed global")
        'functools.partial'
        >>> _refused_object("Trying to load unsupported GLOBAL posix.system whose module posix is blocked.")
        'posix.system'
        >>> _refused_object("WeightsUnpickler error: Unsupported operand 149") is None
        True
    """
    found = re.search(r"GLOBAL\s+([\w.]+)", message)
    if found:
        return found.group(1)
    found = re.search(r"(Can only build [^\n]*?but got [^\n]*)", message)
    return _one_line(found.group(1)) if found else None


def _torch_reason(message: str, local_path: str | None, error: BaseException | None = None) -> str:
    """A short reason for a file torch cannot read, from its start where the message says little."""
    if local_path is not None:
        try:
            with open(local_path, "rb") as file:
                head = file.read(4)
        except OSError:
            head = None
        if head == b"":
            return "the file is empty"
        # torch files are zip archives (PK) or, in the legacy format, pickles (0x80).
        if head is not None and not head.startswith((b"PK", b"\x80")):
            return "it is not a zip archive or a pickle"
        # A zip archive's index (central directory) is written last: a cut file lacks it, and
        # torch then says only "Invalid argument" or "failed finding central directory".
        if head is not None and head.startswith(b"PK") and not zipfile.is_zipfile(local_path):
            return "its zip archive has no central directory, so the file was cut short"
    if "WeightsUnpickler error:" in message:  # after it: torch's actual finding
        message = message.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
    # torch's zip reader appends advice after its first sentence; the sentence is the reason.
    message = message.split(". ")[0]
    if not message.strip() and error is not None:
        return "it ends too early" if isinstance(error, EOFError) else type(error).__name__
    return _one_line(message)


def _cannot_open(path: str, error: OSError) -> SymtrainError:
    return SymtrainError(
        f"cannot read checkpoint '{path}' ({error.strerror or _one_line(error)}): pass a readable .ckpt file"
    )


def _unreadable(path: str, reason: str) -> SymtrainError:
    return SymtrainError(
        f"cannot read checkpoint '{path}': the file is truncated or not a checkpoint ({reason}): "
        f"{_ANOTHER_CHECKPOINT}"
    )


def _shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...] | None]:
    """Each entry's shape (None for a non-tensor)."""
    return {
        key: tuple(value.shape) if isinstance(value, torch.Tensor) else None for key, value in state.items()
    }


def _architecture(hparams: Any) -> dict[str, Any] | None:
    """The hyper-parameters that decide the weights' names and shapes, or None if unknown."""
    if not isinstance(hparams, Mapping) or "backbone" not in hparams:
        return None
    backbone = _backbone_spec(hparams["backbone"])
    if backbone is None:
        return None
    return {
        "backbone": backbone,
        **{key: hparams[key] for key in ("num_classes", "in_channels") if key in hparams},
    }


def _backbone_spec(backbone: Any) -> tuple[str, dict[str, Any]] | None:
    """(class name, init args) of a backbone as configs (dicts) or code (classes, partials) give it."""
    if isinstance(backbone, Mapping) and "class_path" in backbone:
        return str(backbone["class_path"]).rsplit(".", 1)[-1], dict(backbone.get("init_args") or {})
    if isinstance(backbone, functools.partial):
        spec = _backbone_spec(backbone.func)
        return (spec[0], {**spec[1], **backbone.keywords}) if spec else None
    if isinstance(backbone, type):
        return backbone.__name__, {}
    return None


def _describe_difference(trained: dict[str, Any], built: dict[str, Any]) -> tuple[str, str]:
    """How the two architectures differ: backbone first, only the settings that differ.

    Examples:
        >>> _describe_difference(
        ...     {"backbone": ("EquivariantCNN", {"group": "C", "order": 4}), "num_classes": 8},
        ...     {"backbone": ("StandardCNN", {"width": 4}), "num_classes": 8},
        ... )
        ('backbone EquivariantCNN(group=C, order=4)', 'StandardCNN(width=4)')
        >>> _describe_difference(
        ...     {"backbone": ("StandardCNN", {"width": 4}), "num_classes": 8},
        ...     {"backbone": ("StandardCNN", {"width": 4}), "num_classes": 3},
        ... )
        ('num_classes=8', 'num_classes=3')
    """
    was, now = [], []
    (trained_name, trained_args), (built_name, built_args) = trained["backbone"], built["backbone"]
    if trained_name != built_name:
        was.append(f"backbone {_call(trained_name, trained_args)}")
        now.append(_call(built_name, built_args))
    elif trained_args != built_args:
        keys = [k for k in {**trained_args, **built_args} if trained_args.get(k) != built_args.get(k)]
        was.append(f"backbone {_call(trained_name, {k: trained_args[k] for k in keys if k in trained_args})}")
        now.append(_call(built_name, {k: built_args[k] for k in keys if k in built_args}))
    for key in ("num_classes", "in_channels"):
        if trained.get(key) != built.get(key):
            was.append(f"{key}={trained.get(key)}")
            now.append(f"{key}={built.get(key)}")
    return ", ".join(was), ", ".join(now)


def _call(name: str, args: Mapping[str, Any]) -> str:
    """``Name(key=value, ...)``, cut short if long.

    Examples:
        >>> _call("EquivariantCNN", {"group": "C", "order": 4, "restrict_from_stage": None})
        'EquivariantCNN(group=C, order=4, restrict_from_stage=None)'
    """
    inner = ", ".join(f"{key}={value}" for key, value in args.items())
    return f"{name}({_one_line(inner, limit=100)})"
