import os

import pytest
import torch
from hypothesis import settings

# Drawn settings (hypothesis) are the same on every run: a fixed seed, no example database
# carried between runs, and no deadline (building a model takes longer than hypothesis's 200 ms).
settings.register_profile("symtrain", derandomize=True, database=None, deadline=None, print_blob=True)
settings.load_profile("symtrain")

# Tests never touch the network or a wandb account, and stay quiet.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# One thread per process, in the commands the tests start too: the suite's workers already share
# the cores, and more threads than cores make torch's spinning threads wait on each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI is driven with explicit args; pytest's own argv must not look like extra ones."""
    monkeypatch.setattr("sys.argv", ["symtrain"])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow end-to-end runs first: the suite's workers share them out from the start and the
    quick tests fill in around them, rather than one worker finishing a long run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
