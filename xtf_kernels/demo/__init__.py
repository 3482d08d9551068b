"""``xtf demo``: every token filter on the miniature's noisy SFT set, against all tokens and matched random drops.

::

    from xtf_kernels.demo import QUICK, run_demo, read_report
    report = run_demo(QUICK, "xtf_demo_out", device=torch.device("cpu"))
    read_report("xtf_demo_out/report.json")["verdict"]["findings"]

- :mod:`.config` the presets and every knob; :mod:`.experiment` one cell of the comparison (data, every
  method's selection, training, evaluation; the benchmark runs many); :mod:`.aggregate` and
  :mod:`.statistics` the paired comparisons; :mod:`.training` the held-out loss; :mod:`.memory` fused
  against materialised loss memory; :mod:`.report` report.json (fields documented there), :mod:`.summary`
  the conclusions and printed table, :mod:`.html` report.html; :mod:`.run` the whole run.
"""

from __future__ import annotations

from .config import DEFAULT
from .config import PRESETS
from .config import QUICK
from .config import DemoConfig
from .report import read_report
from .report import validate_report
from .report import without_timings
from .run import resolve_device
from .run import run_demo

__all__ = [
    "DEFAULT",
    "PRESETS",
    "QUICK",
    "DemoConfig",
    "read_report",
    "resolve_device",
    "run_demo",
    "validate_report",
    "without_timings",
]
