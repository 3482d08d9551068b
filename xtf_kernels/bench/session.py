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
    """Run ``entries``, print the table and the target verdicts, append the rows to every file in
    ``outputs`` and draw them to ``plot``. Returns the rows."""
    stream = stream or sys.stdout
    rows = run(entries, settings)
    print(format_table(rows), file=stream)
    verdicts = evaluate(rows)
    if verdicts:
        print("targets:", file=stream)
        for verdict in verdicts:
            print("  " + verdict.describe(), file=stream)
    for path in outputs:
        total = append_rows(path, rows)
        print(f"appended {len(rows)} rows to {path} ({total} rows)", file=stream)
    if plot:
        print(f"plot: {plot_rows(rows, plot)}", file=stream)
    return rows
