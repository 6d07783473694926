"""Peak memory: of this process (or its GPU allocations), and of a command's whole process tree."""

from __future__ import annotations

import resource
import subprocess
import time
from pathlib import Path

import torch

from scripts.benchmark import ROOT


def peak_memory(device: torch.device) -> float:
    """Peak bytes: allocated on the GPU since the last reset, or the process's resident peak."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def tree_pss(pid: int) -> int:
    """Bytes of memory the process ``pid`` and its descendants hold, each shared page counted
    once among those sharing it (the proportional set size; RSS would count the forked loader
    workers' shared pages once per worker)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:  # it ended meanwhile
            continue
        pending.extend(int(child) for child in children)
    return total


def peak_tree_memory(command: list[str], interval: float = 0.05) -> tuple[float, float]:
    """Run ``command``; return its wall time and the peak of its process tree's memory."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_pss(process.pid))
        time.sleep(interval)
    if process.returncode != 0:
        raise RuntimeError(process.stderr.read().decode()[-2000:])
    return time.perf_counter() - start, float(peak)
