"""Measure, print, record, plot: the flow shared by ``benchmarks/run.py`` and ``xtf bench``."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from .plot import plot_rows
from .report import format_table
from .runner import RunSettings
from .runner import SuiteEntry
from .runner import run
from .store import ResultRow
from .store import append_rows
from .targets import evaluate


def measure_and_record(
    entries: list[SuiteEntry],
    settings: RunSettings,
    *,
    outputs: list[str | os.PathLike] = (),
    plot: str | os.PathLike | None = None,
    stream: TextIO | None = None,
) -> list[ResultRow]:
    """Run ``entries``, append the rows to every file in ``outputs`` as they complete (so a run stopped
    half-way keeps what it measured), print the table and the target verdicts and draw the rows to
    ``plot``. Returns the rows."""
    stream = stream or sys.stdout
    totals = {str(path): 0 for path in outputs}

    def record(rows: list[ResultRow]) -> None:
        for path in outputs:
            totals[str(path)] = append_rows(path, rows)

    rows = run(entries, settings, on_rows=record)
    print(format_table(rows), file=stream)
    verdicts = evaluate(rows)
    if verdicts:
        print("targets:", file=stream)
        for verdict in verdicts:
            print("  " + verdict.describe(), file=stream)
    for path in outputs:
        print(f"appended {len(rows)} rows to {path} ({totals[str(path)]} rows)", file=stream)
    if plot:
        print(f"plot: {plot_rows(rows, plot)}", file=stream)
    return rows
