import time

import pytest
import torch

from xtf_kernels.bench.timing import time_step


def test_cpu_samples_measure_the_step_after_warmup():
    calls = []

    def step():
        calls.append(time.perf_counter())
        time.sleep(0.02)

    timing = time_step(step, torch.device("cpu"), warmup=2, repeats=3)
    assert len(calls) == 5
    assert len(timing.samples_ms) == 3 and len(timing.loads_1m) == 3
    assert all(19.0 <= ms < 2000.0 for ms in timing.samples_ms)
    assert all(load >= 0.0 for load in timing.loads_1m)


@pytest.mark.parametrize(("warmup", "repeats"), [(-1, 1), (0, 0)])
def test_bad_counts(warmup, repeats):
    with pytest.raises(ValueError, match="repeats"):
        time_step(lambda: None, torch.device("cpu"), warmup=warmup, repeats=repeats)


@pytest.mark.cuda
def test_cuda_events_time_device_work():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    a = torch.randn(4096, 4096, device="cuda")
    timing = time_step(lambda: a @ a, torch.device("cuda"), warmup=2, repeats=5)
    assert len(timing.samples_ms) == 5 and all(ms > 0 for ms in timing.samples_ms)
