"""Two CPU processes (Lightning's relaunching DDP, gloo) measure exactly what one process does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from symtrain.cli import main
from symtrain.clock import START_ENV, note_process_start, seconds_since_start

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--config", str(ROOT / "configs" / "quickstart.yaml"),
    "--config", str(ROOT / "configs" / "trainer" / "debug.yaml"),
    "--data.num_train=256", "--data.num_val=64", "--data.num_test=64", "--data.batch_size=32",
    "--model.backbone.width=4", "--run.wandb=false", "--run.quiet=true",
    "--metrics.num_samples=16", "--metrics.test_num_samples=32",  # every measure, on few images
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["none", "canonicalize_c4"])
def test_two_process_metrics_equal_one_process_metrics(strategy: str, tmp_path: Path) -> None:
    """Also for a wrapped network: the canonical poses chosen are counted over both processes."""
    symmetry = ["--config", str(ROOT / "configs" / "symmetry" / f"{strategy}.yaml")]
    main(["fit", *TINY, *symmetry, f"--trainer.default_root_dir={tmp_path}", "--run.name=trained"])
    config = tmp_path / "trained" / "config.yaml"
    checkpoint = tmp_path / "trained" / "checkpoints" / "best.ckpt"
    test = ["test", "--config", str(config), f"--ckpt_path={checkpoint}", "--trainer.accelerator=cpu"]
    main([*test, "--trainer.devices=1", "--run.name=one"])
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "SYMTRAIN_RUN_DIR")}
    command = [sys.executable, "-m", "symtrain", *test, "--trainer.devices=2", "--trainer.strategy=ddp"]
    done = subprocess.run([*command, "--run.name=two"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "trained", "two"]  # one run for 2 processes
    one = json.loads((tmp_path / "one" / "summary.json").read_text())["metrics"]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())["metrics"]
    assert set(one) == set(two) and any("/equiv/" in key for key in one)
    assert ("test/canonical/identity_share" in one) == (strategy == "canonicalize_c4")
    for key, value in one.items():
        if key.endswith(("/acc", "/consistency")):
            assert two[key] == value, key  # counts: exactly equal
        else:
            assert two[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["escnn_c4"])  # escnn's models are the ones ranks could build apart
def test_two_process_fit_makes_one_run(backbone: str, tmp_path: Path) -> None:
    """The real command, 2 CPU processes: one run directory, one wandb run, one summary."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "SYMTRAIN_RUN_DIR", "PYTHONHASHSEED")
    }
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")
    command = [sys.executable, "-m", "symtrain", "fit", *[a for a in TINY if a != "--run.wandb=false"]]
    command += [
        "--config",
        str(ROOT / "configs" / "backbone" / f"{backbone}.yaml"),
        "--model.backbone.depth=2",
    ]
    command += [
        "--config",
        str(ROOT / "configs" / "trainer" / "ddp_cpu.yaml"),
        f"--trainer.default_root_dir={tmp_path}",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "wandb"]
    assert len(runs) == 1
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert {"test/acc", "test/equiv/rot90/invariance_error"} <= set(summary["metrics"])
    assert (runs[0] / "checkpoints" / "best.ckpt").is_file() and (runs[0] / "config.yaml").is_file()


MIXED_FIELDS = """
from escnn import gspaces, nn as enn
from symtrain.distributed import model_signature
gspace = gspaces.flipRot2dOnR2(4)
fields = [gspace.trivial_repr, gspace.regular_repr, gspace.irrep(1, 1), gspace.regular_repr]
field_type = enn.FieldType(gspace, fields)
model = enn.SequentialModule(enn.R2Conv(field_type, field_type, 3), enn.IIDBatchNorm2d(field_type))
print(model_signature(model))
"""


def test_ranks_build_identical_mixed_field_models_under_the_fixed_hash_seed(tmp_path: Path) -> None:
    """What every DDP process does: build the model in a fresh interpreter with PYTHONHASHSEED=0."""
    script = tmp_path / "build.py"
    script.write_text(MIXED_FIELDS)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    signatures = {
        subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(signatures) == 1 and len(signatures.pop().strip()) == 64


def test_module_entry_point_restarts_with_a_fixed_hash_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    import symtrain.__main__ as entry

    class Restarted(Exception):
        pass

    calls: list[list[str]] = []

    def fake_execv(path: str, argv: list[str]) -> None:
        calls.append([path, *argv])
        raise Restarted

    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    monkeypatch.delenv(START_ENV, raising=False)  # and restored after: run() notes its start
    monkeypatch.setattr(entry.os, "execv", fake_execv)
    with pytest.raises(Restarted):
        entry.run()
    assert os.environ["PYTHONHASHSEED"] == "0"
    assert calls == [[sys.executable, sys.executable, *sys.orig_argv[1:]]]


def test_a_command_measures_from_its_own_start_or_its_launchers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A start time noted by this process (before it re-executed itself) or by its parent (the
    DDP launcher) is this command's; one inherited from any other process (a script or command
    that started this one) is not, and the command notes its own."""
    now = time.time()
    for pid in (os.getpid(), os.getppid()):
        monkeypatch.setenv(START_ENV, f"{pid}:{now - 100}")
        note_process_start()
        assert 100 <= (seconds_since_start() or 0) < 200
    monkeypatch.setenv(START_ENV, f"{2**22 + 1}:{now - 100}")  # above any pid Linux hands out
    assert seconds_since_start() is None
    note_process_start()
    assert 0 <= (seconds_since_start() or -1) < 5
