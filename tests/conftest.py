import os

import pytest
import torch

# Tests never touch the network or a wandb account, and stay quiet.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI is driven with explicit args; pytest's own argv must not look like extra ones."""
    monkeypatch.setattr("sys.argv", ["symtrain"])
