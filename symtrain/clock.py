"""When the command started: light enough for ``python -m symtrain`` to call before any import.

``python -m symtrain`` notes its start time in the environment, so the process it re-executes
(and the ones DDP relaunches) measure from the same moment. The note names the process that
wrote it: a process that inherits a note from anything but itself (re-executed, same pid) or
its parent (a DDP launcher) starts its own clock, so a command started from a script, a test or
another command never counts their time as its start-up.
"""

from __future__ import annotations

import os
import time

START_ENV = "SYMTRAIN_STARTED"


def _noted() -> tuple[int, float] | None:
    """(pid, start time) of the note this process may measure from, or None."""
    pid, _, started = os.environ.get(START_ENV, "").partition(":")
    try:
        noted = int(pid), float(started)
    except ValueError:
        return None
    return noted if noted[0] in (os.getpid(), os.getppid()) else None


def note_process_start(again: bool = False) -> None:
    """Record when the command started (wall clock), unless this process (before a re-exec) or
    its parent (a DDP launcher) already did; ``again``: a process forked to run a command of its
    own starts its clock anew."""
    if again or _noted() is None:
        os.environ[START_ENV] = f"{os.getpid()}:{time.time()!r}"


def seconds_since_start() -> float | None:
    """Seconds since :func:`note_process_start` in this process or its parent, or None."""
    noted = _noted()
    return None if noted is None else time.time() - noted[1]


def without_start(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` for a new command of its own (it starts its own clock)."""
    return {key: value for key, value in environ.items() if key != START_ENV}
