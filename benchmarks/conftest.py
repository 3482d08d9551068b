"""Shared by the pytest-benchmark cases: build a provider's step, record its time and peak memory.

Under ``--benchmark-disable`` (the CPU tier of tests/run.sh) every case runs a few steps at a small
shape, so these are smoke tests that also check each provider's output against a float64 reference;
on a GPU machine (``pytest -m cuda benchmarks``) pytest-benchmark times them for real.
"""

from __future__ import annotations

import pytest
import torch

from xtf_kernels.bench.cases import Case
from xtf_kernels.bench.inputs import make_inputs
from xtf_kernels.bench.memory import measure_peak
from xtf_kernels.bench.providers import get_provider
from xtf_kernels.bench.timing import time_step

_GIB = 2**30


@pytest.fixture
def measure_case(benchmark):
    """measure(provider_name, device, case) -> (inputs, output of the last step).

    Skips, saying why, when the provider cannot run the case here (a peer not installed, no GPU, an
    option it lacks). Records ms (one step after a warm-up step) and peak / extra memory in
    ``benchmark.extra_info``.
    """

    def measure(name: str, device: str, case: Case):
        if device == "cuda" and not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        provider = get_provider(name)
        unavailable = provider.check(torch.device(device), case)
        if unavailable is not None:
            pytest.skip(f"{name} {unavailable.status}: {unavailable.reason}")
        inputs = make_inputs(case, device)
        step = provider.build(inputs, case)
        timing = time_step(step, torch.device(device), warmup=1, repeats=1)
        peak = measure_peak(step, inputs)
        benchmark.extra_info.update(
            provider=name, path=provider.path, case=case.label, ms=timing.samples_ms[0],
            peak_gib=peak.peak_bytes / _GIB, extra_gib=peak.extra_bytes / _GIB, mem_method=peak.method,
        )

        def synced_step():
            out = step()
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        out = benchmark(synced_step)
        return inputs, out

    return measure
