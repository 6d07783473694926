"""Timers: a call's seconds with the device's queue drained before and after, ``count`` calls in
a row, and the wall time of a command."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from statistics import median
from typing import Any

import torch

from scripts.benchmark import ROOT


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def repeat(function: Callable[[], Any], count: int, device: torch.device) -> float:
    """Seconds for ``count`` calls of ``function``."""

    def run() -> None:
        for _ in range(count):
            function()

    return timed(run, device)


def wall(command: list[str], rounds: int) -> float:
    """Median seconds of ``command`` run from the repository root, process start to exit."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return median(times)
