"""Benchmark of the fused ops against their peers: time, effective TFLOP/s and peak memory.

The pieces, in the order a run uses them:
- :mod:`.models` named lm_head shapes; :mod:`.cases` what one measurement is (shape, mode, dtype, tokens
  kept) and its FLOP floor; :mod:`.suites` the standard case sets; :mod:`.inputs` deterministic inputs.
- :mod:`.providers` every implementation timed (xtf's backends and the peers), each able to say why it
  cannot run a case.
- :mod:`.timing` CUDA events / perf_counter; :mod:`.memory` peak memory and how it is measured.
- :mod:`.worker` measures in a child process; :mod:`.runner` orchestrates, interleaves and builds rows.
- :mod:`.store` the validated, atomically appended CSV; :mod:`.report` the table; :mod:`.targets` the
  verdicts; :mod:`.plot` the PNG.

``benchmarks/run.py`` and ``xtf bench`` are thin front ends over :func:`.runner.run`.
"""

from .cases import Case
from .runner import RunSettings
from .runner import SuiteEntry
from .runner import run
from .store import ResultRow
from .store import append_rows
from .store import read_rows

__all__ = ["Case", "ResultRow", "RunSettings", "SuiteEntry", "append_rows", "read_rows", "run"]
