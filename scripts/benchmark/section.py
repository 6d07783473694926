"""What a section declares (:class:`Section`) and what each section runs with (:class:`Bench`).

A module of ``scripts/benchmark/sections/`` is a section by defining ``SECTION``; the
registry (:data:`scripts.benchmark.sections.SECTIONS`) imports every module there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scripts.benchmark.sizes import Sizes
from scripts.benchmark.table import Table

Results = dict[str, Any]


@dataclass(frozen=True)
class Bench:
    """The settings of one benchmark run, the same for every section."""

    root: Path  # a temporary directory for the runs' files, removed at the end
    accelerator: str  # Lightning's name of the device: "gpu" or "cpu"
    device: torch.device
    sizes: Sizes
    fit_args: str  # --fit-args: extra symtrain flags of the overhead section's fits
    step_batch: int  # the batch of the step-level rows (strategies, escnn)


@dataclass(frozen=True)
class Section:
    """One ``--sections`` choice: what it measures and how the report shows it.

    ``run`` returns the figures it adds to the results (the JSON file's keys). ``rows`` adds
    the section's lines to the report's table and ``notes`` returns the lines below it, each
    from the results alone and only for the keys present. Sections run, and are listed, in
    ``order``; their rows and notes follow ``rows_order`` and ``notes_order`` where given.
    """

    name: str
    order: int
    run: Callable[[Bench], Results]
    rows: Callable[[Table, Results], None] | None = None
    notes: Callable[[Results], list[str]] | None = None
    rows_order: int | None = None
    notes_order: int | None = None

    @property
    def rows_position(self) -> int:
        return self.order if self.rows_order is None else self.rows_order

    @property
    def notes_position(self) -> int:
        return self.order if self.notes_order is None else self.notes_order
