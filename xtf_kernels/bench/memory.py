"""Peak memory of one step, and what "extra" means.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (the convention of Liger's
and CCE's benchmarks). ``peak`` is the whole device high-water mark (inputs included); ``extra`` is
peak minus what was allocated just before the step (the inputs), i.e. what the op itself needed,
gradients included.

CPU: torch has no allocator statistics there, so the step runs once under ``torch.profiler`` with
``profile_memory=True``, which records every allocation and free of torch's CPU allocator (inside
custom ops too); the running sum of those events, in time order, peaks at ``extra``. ``peak`` is the
inputs' bytes plus ``extra``. It counts tensor memory exactly and nothing else (oneDNN's small
internal scratch and the Python heap are not in it). As a cross-check the worker process also reports
the growth of its peak resident set size (``ru_maxrss`` over the RSS after the inputs were made), which
is only clean in a process that ran that one case.

Gradients left over from an earlier step are freed before measuring, so both figures count the
step's own gradients.
"""

from __future__ import annotations

import gc
import resource
import sys
from collections.abc import Callable
from typing import NamedTuple

import torch

from .inputs import BenchInputs

CUDA_METHOD = "cuda max_memory_allocated"
CPU_METHOD = "torch allocator trace (profiler)"


class MemoryPeak(NamedTuple):
    peak_bytes: int
    extra_bytes: int
    method: str


def _cuda_peak(step: Callable[[], object], device: torch.device) -> MemoryPeak:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return MemoryPeak(peak, peak - base, CUDA_METHOD)


def allocation_peak_bytes(step: Callable[[], object]) -> int:
    """Peak of the net bytes torch's CPU allocator handed out while ``step`` ran (>= 0)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        if event.device_type() != torch.autograd.DeviceType.CPU:
            continue
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def measure_peak(step: Callable[[], object], inputs: BenchInputs) -> MemoryPeak:
    """Peak and extra bytes of one ``step`` on the inputs' device (see the module docstring)."""
    inputs.clear_grads()
    gc.collect()
    device = inputs.hidden.device
    if device.type == "cuda":
        return _cuda_peak(step, device)
    extra = allocation_peak_bytes(step)
    return MemoryPeak(inputs.nbytes + extra, extra, CPU_METHOD)


def current_rss_bytes() -> int | None:
    """Resident set size of this process now (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * resource.getpagesize()


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024
