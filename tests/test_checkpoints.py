"""Checkpoints survive a kill while saving, load safely, and say clearly when they cannot be used."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch

from symtrain.backbones import AntialiasedCNN, EquivariantCNN
from symtrain.checkpoints import AtomicCheckpointIO, check_checkpoint_fits, read_checkpoint
from symtrain.cli import SymtrainCLI, main
from symtrain.errors import SymtrainError
from symtrain.module import SymmetryModule

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
DEBUG = str(ROOT / "configs" / "trainer" / "debug.yaml")
# The smallest fit that still writes real checkpoints through the CLI.
TINY = [
    "--data.num_train=64",
    "--data.num_val=32",
    "--data.num_test=32",
    "--data.batch_size=32",
    "--model.backbone.width=4",
    "--run.wandb=false",
    "--run.quiet=true",
    "--run.test_after_fit=false",
]

# Run in a fresh process: saves a first checkpoint, then dies by SIGKILL halfway through writing
# the bytes of a second one, at the point `kill_at` names.
KILLED_WHILE_SAVING = r"""
import io, os, shutil, signal, sys
import torch

path, writer, kill_at = sys.argv[1:]
if writer == "atomic":
    from symtrain.checkpoints import AtomicCheckpointIO as IO
else:
    from lightning.fabric.plugins.io import TorchCheckpointIO as IO

IO().save_checkpoint({"step": 1, "weights": torch.arange(1000.0)}, path)

def write_half_and_die(data, file):
    file.write(data[: len(data) // 2])
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)

if kill_at == "torch.save":  # the checkpoint's bytes are being serialised into a file
    real_save = torch.save
    def save(obj, file, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        write_half_and_die(buffer.getvalue(), file)
    torch.save = save
else:  # "copy": a finished file is being copied to another file system
    shutil._USE_CP_SENDFILE = False  # take the portable copy loop that is patched here
    shutil._USE_CP_COPY_FILE_RANGE = False
    shutil.copyfileobj = lambda source, target, *args: write_half_and_die(source.read(), target)

IO().save_checkpoint({"step": 2, "weights": torch.arange(100_000.0)}, path)
sys.exit("the kill did not happen")
"""


def kill_while_saving(path: Path, writer: str, kill_at: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_SAVING, str(path), writer, kill_at],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_a_kill_while_saving_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    # Named like a SLURM requeue checkpoint: Lightning picks the newest of those by listing the
    # names that contain "hpc_ckpt_", so the half-written file must not carry that name.
    path = tmp_path / "hpc_ckpt_1.ckpt"
    kill_while_saving(path, "atomic", "torch.save")
    checkpoint = AtomicCheckpointIO().load_checkpoint(path)
    assert checkpoint["step"] == 1 and torch.equal(checkpoint["weights"], torch.arange(1000.0))
    # The kill did land halfway through the second checkpoint, which waits aside.
    half_written = tmp_path / ".partial" / "hpc_ckpt_1.ckpt"
    assert half_written.stat().st_size > 100_000 * 4 / 2
    assert [name for name in os.listdir(tmp_path) if "hpc_ckpt_" in name] == ["hpc_ckpt_1.ckpt"]
    # The next save overwrites the leftover and cleans up after itself.
    AtomicCheckpointIO().save_checkpoint({"step": 3}, path)
    assert read_checkpoint(path) == {"step": 3}
    assert sorted(os.listdir(tmp_path)) == ["hpc_ckpt_1.ckpt"]


@pytest.fixture
def other_file_system(tmp_path: Path) -> Iterator[Path]:
    """A fresh folder on another file system than ``tmp_path`` (e.g. tmpfs), else skip."""
    for candidate in ("/dev/shm", tempfile.gettempdir(), "/run/user", "/var/tmp"):
        try:
            if os.stat(candidate).st_dev != os.stat(tmp_path).st_dev and os.access(candidate, os.W_OK):
                break
        except OSError:
            continue
    else:
        pytest.skip("no writable directory on another file system than the test's")
    folder = Path(tempfile.mkdtemp(dir=candidate))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_lightnings_own_save_is_torn_by_a_kill_when_temp_files_live_elsewhere(
    tmp_path: Path, other_file_system: Path
) -> None:
    """What AtomicCheckpointIO fixes: Lightning writes a temporary file in the system temp
    directory and moves it into place, which across file systems (local /tmp, shared runs/)
    is a copy into the old checkpoint, in place."""
    path = tmp_path / "last.ckpt"
    kill_while_saving(path, "lightning", "copy", env={"TMPDIR": str(other_file_system)})
    with pytest.raises(SymtrainError, match="truncated or not a checkpoint"):
        read_checkpoint(path)
    # Ours, under the same conditions, never copies: nothing to kill it in.
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    assert read_checkpoint(path) == {"step": 1}


def test_saving_makes_the_folders_and_a_failure_is_one_line(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert os.listdir(tmp_path / "run" / "checkpoints") == ["last.ckpt"]
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SymtrainError) as error:
        io.save_checkpoint({"step": 1}, tmp_path / "a-file" / "last.ckpt")
    assert str(error.value).startswith(f"cannot write checkpoint '{tmp_path / 'a-file' / 'last.ckpt'}' (")
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny fit through the CLI (so with AtomicCheckpointIO), shared by the tests below."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["symtrain"])
        main(["fit", "--config", QUICKSTART, "--config", DEBUG, *TINY, f"--trainer.default_root_dir={root}"])
    (run_dir,) = [path for path in root.iterdir() if path.is_dir() and path.name != "wandb"]
    return run_dir


def build_module(*args: str) -> SymmetryModule:
    """The module the CLI builds for the tiny config, with more flags on top."""
    return SymtrainCLI(args=["--config", QUICKSTART, *TINY, *args], run=False).model


def test_a_real_checkpoint_loads_safely_and_fits_its_config(fitted_run: Path) -> None:
    path = fitted_run / "checkpoints" / "best.ckpt"
    assert sorted(os.listdir(path.parent)) == ["best.ckpt", "last.ckpt"]  # no partial file left
    checkpoint = read_checkpoint(path)  # weights_only=True throughout, no extra allowed globals
    assert checkpoint["hyper_parameters"]["backbone"]["init_args"]["width"] == 4
    assert AtomicCheckpointIO().load_checkpoint(path).keys() == checkpoint.keys()
    check_checkpoint_fits(checkpoint, build_module(), path)
    check_checkpoint_fits(checkpoint, build_module().eval(), path)


def test_a_checkpoint_of_another_backbone_names_what_it_was_trained_with(fitted_run: Path) -> None:
    path = fitted_run / "checkpoints" / "best.ckpt"
    checkpoint = read_checkpoint(path)
    with pytest.raises(SymtrainError) as error:
        check_checkpoint_fits(checkpoint, build_module("--model.backbone.width=8"), path)
    assert str(error.value) == (
        f"checkpoint '{path}' was trained with backbone StandardCNN(width=4) but this run builds "
        "StandardCNN(width=8): pass the config it was trained with (its run's config.yaml) or another "
        "checkpoint"
    )
    deeper = SymmetryModule(partial(AntialiasedCNN, width=4, depth=4), num_classes=8)
    with pytest.raises(
        SymtrainError, match=r"trained with backbone StandardCNN\(width=4, depth=3, .*\) but this "
    ):
        check_checkpoint_fits(checkpoint, deeper, path)
    # Without hyper-parameters, the mismatched weights themselves are named.
    with pytest.raises(SymtrainError) as error:
        check_checkpoint_fits({"state_dict": checkpoint["state_dict"]}, deeper, path)
    assert str(error.value).startswith(f"checkpoint '{path}' does not fit this model (missing net.backbone.")


def test_a_truncated_checkpoint_is_named_in_one_line(fitted_run: Path, tmp_path: Path) -> None:
    data = (fitted_run / "checkpoints" / "last.ckpt").read_bytes()
    path = tmp_path / "last.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SymtrainError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert message == (
        f"cannot read checkpoint '{path}': the file is truncated or not a checkpoint (its zip archive has "
        "no central directory, so the file was cut short): use another checkpoint, e.g. the run's "
        "checkpoints/best.ckpt"
    )
    with pytest.raises(SymtrainError, match="truncated or not a checkpoint"):
        AtomicCheckpointIO().load_checkpoint(path)


@pytest.mark.parametrize(
    "content,reason",
    [
        (random.Random(0).randbytes(4096), "it is not a zip archive or a pickle"),
        (b"step: 3\nweights: [1, 2]\n", "it is not a zip archive or a pickle"),
        (b"", "the file is empty"),
        (pickle.dumps({"step": 3}, protocol=5), "Unsupported operand 149"),
        ("tensor", "it holds a Tensor, not a dictionary"),
    ],
    ids=["random-bytes", "text", "empty", "plain-pickle", "a-tensor"],
)
def test_files_that_are_not_checkpoints_say_so(content: bytes | str, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        path.write_bytes(content)
    with pytest.raises(SymtrainError) as error:
        read_checkpoint(path)
    assert str(error.value) == (
        f"cannot read checkpoint '{path}': the file is truncated or not a checkpoint ({reason}): "
        "use another checkpoint, e.g. the run's checkpoints/best.ckpt"
    )


def test_a_missing_file_or_a_folder(tmp_path: Path) -> None:
    with pytest.raises(SymtrainError) as error:
        AtomicCheckpointIO().load_checkpoint(tmp_path / "missing.ckpt")
    assert str(error.value) == (
        f"checkpoint '{tmp_path / 'missing.ckpt'}' does not exist: pass a .ckpt file or a run directory"
    )
    with pytest.raises(SymtrainError, match=rf"cannot read checkpoint '{tmp_path}' \(Is a directory\)"):
        read_checkpoint(tmp_path)


class _MakesADirectory:
    """Unpickling this runs ``os.mkdir(marker)``: how a malicious checkpoint runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_a_malicious_checkpoint_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": _MakesADirectory(marker)}, path)
    for load in (read_checkpoint, partial(AtomicCheckpointIO().load_checkpoint, weights_only=False)):
        with pytest.raises(SymtrainError) as error:
            load(path)
        assert str(error.value).startswith(
            f"checkpoint '{path}' holds Python objects that safe loading refuses "
            f"({os.mkdir.__module__}.mkdir): only load checkpoints you trust;"
        )
        assert "\n" not in str(error.value)
        assert not marker.exists()
    torch.load(path, weights_only=False)  # what unsafe loading would have done
    assert marker.is_dir()


def test_escnn_checkpoints_fit_in_train_and_eval_mode() -> None:
    """escnn's cache of expanded filters exists in eval mode only; it must not count as weights."""
    c4 = partial(EquivariantCNN, group="C", order=4, width=4, depth=1)
    saved = SymmetryModule(c4, num_classes=3).eval()
    checkpoint = {"state_dict": saved.state_dict(), "hyper_parameters": dict(saved.hparams)}
    # An escnn model saved without EquivariantCNN's care (older checkpoints) holds the cache too.
    with_cache = dict(checkpoint["state_dict"])
    for name, module in saved.named_modules():
        if hasattr(module, "filter") and hasattr(module, "weights"):
            with_cache[f"{name}.filter"] = module.filter
    assert len(with_cache) > len(checkpoint["state_dict"])
    for state in (checkpoint["state_dict"], with_cache):
        for mode in (True, False):
            module = SymmetryModule(c4, num_classes=3).train(mode)
            check_checkpoint_fits({**checkpoint, "state_dict": state}, module, "c4.ckpt")
    wider = SymmetryModule(partial(EquivariantCNN, group="C", order=4, width=8, depth=1), num_classes=3)
    with pytest.raises(
        SymtrainError, match=r"trained with backbone EquivariantCNN\(width=4\) but this run builds"
    ):
        check_checkpoint_fits({**checkpoint, "state_dict": with_cache}, wider.eval(), "c4.ckpt")
