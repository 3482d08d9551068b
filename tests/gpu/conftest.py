"""The checks of the GPU run (benchmarks/gpu_run.sh), marker ``cuda``; see tests/gpu/__init__ for the list.

``XTF_GPU_DRY_RUN=1`` rehearses them on the CPU: the same code at tiny shapes with the paths the CPU has
(torch), so the GPU run cannot fail on an import, a fixture or a path. ``XTF_GPU_REPORT=FILE`` appends
one JSON line per measurement (errors against the reference, timings, path choices) to FILE.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import pytest
import torch

DRY_RUN = os.environ.get("XTF_GPU_DRY_RUN") == "1"


class Target(NamedTuple):
    """Where the checks run: the GPU, or the CPU at tiny shapes (``dry_run``)."""

    device: torch.device
    dry_run: bool

    def size(self, gpu: int, dry: int) -> int:
        """A dimension: ``gpu`` on the GPU, ``dry`` in the rehearsal."""
        return dry if self.dry_run else gpu


@pytest.fixture(scope="session")
def target() -> Target:
    if DRY_RUN:
        return Target(torch.device("cpu"), True)
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (XTF_GPU_DRY_RUN=1 rehearses these checks on the CPU)")
    return Target(torch.device("cuda"), False)


@pytest.fixture(scope="session")
def report():
    """report(check, **fields): one JSON line in $XTF_GPU_REPORT (and the test's captured output)."""
    path = os.environ.get("XTF_GPU_REPORT")

    def write(check: str, **fields) -> None:
        line = json.dumps({"check": check, "dry_run": DRY_RUN, **fields}, default=str)
        print(line)
        if path:
            with open(path, "a") as f:
                f.write(line + "\n")

    return write
