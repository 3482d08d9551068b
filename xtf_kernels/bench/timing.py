"""Wall time of one step: CUDA events on a GPU, ``time.perf_counter`` on the CPU.

Both run ``warmup`` untimed steps first (kernel compilation, autotuning, torch.compile, allocator
growth), then time ``repeats`` steps one by one and return every sample in milliseconds; callers
report the median. Each sample's 1-minute load average is returned too, because on a shared CPU the
load moves the times.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NamedTuple

import torch


class Timing(NamedTuple):
    samples_ms: list[float]
    loads_1m: list[float]


def load_1m() -> float:
    """The 1-minute load average (0.0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def time_step(step: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> Timing:
    """Run ``step`` ``warmup`` times untimed, then ``repeats`` timed samples (ms)."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    for _ in range(warmup):
        step()
    samples: list[float] = []
    loads: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            loads.append(load_1m())
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        return Timing(samples, loads)
    for _ in range(repeats):
        loads.append(load_1m())
        begin = time.perf_counter()
        step()
        samples.append((time.perf_counter() - begin) * 1e3)
    return Timing(samples, loads)
