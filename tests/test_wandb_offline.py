"""No network, no wandb login: nothing hangs or prompts, online falls back to offline with a message.

Never touches the real internet: the "server" is a local port, closed or listening.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from symtrain import tracking
from symtrain.tracking import wandb_mode

ROOT = Path(__file__).resolve().parents[1]
FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 characters, the shape of a wandb API key


@pytest.fixture(autouse=True)
def no_wandb_login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials, no proxy and rank 0 unless a test says otherwise, whatever the machine has."""
    for name in list(os.environ):
        if name.startswith("WANDB_") or name.lower().endswith("_proxy") or name == "NETRC":
            monkeypatch.delenv(name)
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # netrc.netrc() reads ~/.netrc, found through HOME


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def unreachable_login(monkeypatch: pytest.MonkeyPatch, closed_port: int) -> None:
    """A wandb login whose server refuses connections (no network, in effect)."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port}")


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A local port that accepts connections (the kernel completes them: no thread needed)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection attempted, recorded (and still made)."""
    made: list[tuple[str, int]] = []
    connect = socket.create_connection

    def recording(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        made.append(address)
        return connect(address, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "create_connection", recording)
    return made


@pytest.mark.usefixtures("unreachable_login")
def test_online_with_an_unreachable_server_logs_offline_fast(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    start = time.monotonic()
    assert wandb_mode() == "offline"
    assert time.monotonic() - start < 5
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"symtrain: wandb: cannot reach 127.0.0.1:{closed_port} (")
    assert captured.err.rstrip().endswith(
        "): logging offline; upload later with: wandb sync runs/wandb/offline-run-*"
    )


@pytest.mark.usefixtures("unreachable_login")
def test_the_message_names_the_directory_to_sync(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], closed_port: int, tmp_path: Path
) -> None:
    # logged in, no WANDB_MODE: online is tried too
    assert wandb_mode(str(tmp_path / "study")) == "offline"
    assert f"wandb sync {tmp_path / 'study' / 'wandb'}/offline-run-*\n" in capsys.readouterr().err


@pytest.mark.parametrize("requested", ["online", None])
def test_online_with_a_reachable_server_stays_online(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    listening_port: int,
    connections: list[tuple[str, int]],
    requested: str | None,
) -> None:
    if requested:
        monkeypatch.setenv("WANDB_MODE", requested)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{listening_port}")
    assert wandb_mode() == "online"
    assert connections == [("127.0.0.1", listening_port)]
    assert capsys.readouterr().err == ""


def test_a_netrc_entry_for_the_server_counts_as_a_login(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], listening_port: int, tmp_path: Path
) -> None:
    # What `wandb login` writes for a server with an explicit port: the machine is host:port.
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text(f"machine 127.0.0.1:{listening_port}\n  login user\n  password {FAKE_KEY}\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{listening_port}")
    assert wandb_mode() == "online"
    assert capsys.readouterr().err == ""


def test_online_without_credentials_logs_offline_instead_of_prompting(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    connections: list[tuple[str, int]],
) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode() == "offline"
    assert connections == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        "symtrain: wandb: WANDB_MODE=online but no credentials for api.wandb.ai: logging offline"
    )
    assert "wandb login" in err
    assert "wandb sync runs/wandb/offline-run-*" in err


def test_without_mode_or_credentials_offline_silently_and_without_the_network(
    capsys: pytest.CaptureFixture[str], connections: list[tuple[str, int]]
) -> None:
    assert wandb_mode() == "offline"
    assert connections == []
    assert capsys.readouterr().err == ""


@pytest.mark.usefixtures("unreachable_login")
@pytest.mark.parametrize("requested", ["offline", "dryrun", "disabled"])
def test_modes_without_the_network_pass_through_unchecked(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    closed_port: int,
    connections: list[tuple[str, int]],
    requested: str,
) -> None:
    monkeypatch.setenv("WANDB_MODE", requested)
    assert wandb_mode() == requested
    assert connections == []
    assert capsys.readouterr().err == ""


@pytest.mark.usefixtures("unreachable_login")
def test_only_the_first_process_speaks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP worker: same answer, no second copy of the line
    assert wandb_mode() == "offline"
    assert capsys.readouterr().err == ""


def test_a_stalled_connection_or_name_lookup_is_cut_short(monkeypatch: pytest.MonkeyPatch) -> None:
    # A name lookup has no timeout of its own; the probe must not wait for it.
    def stalled(*args: object, **kwargs: object) -> socket.socket:
        time.sleep(2)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", stalled)
    start = time.monotonic()
    assert tracking._cannot_connect("api.wandb.ai", 443, timeout=0.2) == "timed out"
    assert time.monotonic() - start < 1


@pytest.mark.slow
def test_a_run_with_wandb_online_and_no_network_completes_offline(tmp_path: Path, closed_port: int) -> None:
    root = tmp_path / "runs"
    command = [
        sys.executable, "-m", "symtrain", "fit",
        "--config", "configs/quickstart.yaml", "--config", "configs/trainer/debug.yaml",
        "--data.num_train=64", "--data.num_val=32", "--data.num_test=32",
        "--model.backbone.width=4", "--run.quiet=true", f"--trainer.default_root_dir={root}",
    ]  # fmt: skip
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "WANDB_MODE": "online",
        "WANDB_API_KEY": FAKE_KEY,
        "WANDB_BASE_URL": f"http://127.0.0.1:{closed_port}",
    }
    # No terminal to prompt on: a prompt or a retry loop would show up as the timeout.
    done = subprocess.run(
        command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"symtrain: wandb: cannot reach 127.0.0.1:{closed_port} (" in done.stderr
    assert f"logging offline; upload later with: wandb sync {root}/wandb/offline-run-*" in done.stderr
    offline_runs = list((root / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, sorted(p.name for p in (root / "wandb").iterdir())
    assert list(offline_runs[0].glob("*.wandb"))  # the run's records, ready for `wandb sync`
    assert not list((root / "wandb").glob("run-*"))  # no online run was started
