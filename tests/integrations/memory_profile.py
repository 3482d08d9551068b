"""CPU memory accounting from the profiler's allocation events (the CPU allocator keeps no peak counter)."""

from __future__ import annotations

from typing import NamedTuple

from torch.profiler import ProfilerActivity
from torch.profiler import profile


class MemoryProfile(NamedTuple):
    """peak: highest sum of live bytes allocated inside the profiled call (net of what it freed);
    largest: the largest single allocation it made, in bytes."""

    peak: int
    largest: int


def profile_memory(fn) -> MemoryProfile:
    """Run ``fn()`` under the profiler and replay its allocation / free events in time order.

    Every CPU allocation made through torch appears, including those inside custom ops, so ``largest``
    bounds every tensor the call created.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = largest = 0
    for event in events:
        nbytes = event.nbytes()
        live += nbytes
        peak = max(peak, live)
        largest = max(largest, nbytes)
    return MemoryProfile(peak, largest)
