"""When the command started: light enough for ``python -m symtrain`` to call before any import.

``python -m symtrain`` notes its start time in the environment, so the process it re-executes
(and the ones DDP relaunches) measure from the same moment.
"""

from __future__ import annotations

import os
import time

START_ENV = "SYMTRAIN_STARTED"


def note_process_start(again: bool = False) -> None:
    """Record when the command started (wall clock), unless a parent process already did (or
    ``again``: a process forked to run a command of its own starts its clock anew)."""
    if again or START_ENV not in os.environ:
        os.environ[START_ENV] = repr(time.time())


def seconds_since_start() -> float | None:
    """Seconds since :func:`note_process_start`, or None if it was not called."""
    started = os.environ.get(START_ENV)
    return None if started is None else time.time() - float(started)
