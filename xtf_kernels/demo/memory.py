"""Peak memory and speed of the fused loss against materialised logits, on one training batch's shape.

The demo model's own head has 64 rows, so its logits are negligible either way; the comparison keeps the
batch (tokens = batches x batch_size x (longest training sample - 1) label positions, the demo model's hidden
size) and puts an lm_head of ``memory_vocab`` rows behind it (default 128256, Llama-3's vocabulary), fp32 as
the demo trains, forward + backward with gradients to the hidden states and the head weight.

It runs on the benchmark's own machinery with its deterministic inputs (:mod:`xtf_kernels.bench`): peak
memory from torch's allocator trace on the CPU and ``torch.cuda.max_memory_allocated`` on a GPU
(:mod:`xtf_kernels.bench.memory`), time as the median of a few steps after a warm-up. On the CPU each
side is measured in this process (:func:`xtf_kernels.bench.worker.run_job`; the allocator trace counts only
the step's own allocations, and two worker start-ups would cost more than the measurement); on a GPU
each runs in a fresh worker process (:func:`xtf_kernels.bench.run`), away from the demo's models and with
the provider's environment applied. The fused provider is the backend ``backend="auto"`` resolves to on
the device (for Triton, its fused path); the materialised one is ``logits.float()`` + ``F.cross_entropy``.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys

import torch

from ..bench import Case
from ..bench import RunSettings
from ..bench import SuiteEntry
from ..bench import run as run_bench
from ..bench.environment import device_description
from ..bench.worker import run_job
from ..ops.registry import resolve_backend

FUSED_PROVIDERS = {"torch": "xtf-torch", "triton": "xtf-triton-fused", "cuda": "xtf-cuda"}
MATERIALISED_PROVIDER = "torch-materialised"
_GIB = 2**30


def fused_provider(device: torch.device) -> str:
    """The benchmark provider of the backend ``backend="auto"`` picks on ``device``."""
    return FUSED_PROVIDERS[resolve_backend("auto", device)]


def _side(provider: str, status: str, reason: str, peak: int | None, extra: int | None, ms: float | None,
          tokens: int) -> dict:
    ok = status == "ok"
    return {"provider": provider, "status": status, "reason": reason, "peak_bytes": peak if ok else None,
            "extra_bytes": extra if ok else None, "ms": ms if ok else None,
            "tokens_per_second": tokens / (ms * 1e-3) if ok and ms else None}


@contextlib.contextmanager
def _native_stderr_silenced():
    """fd 2 to /dev/null: the profiler behind the CPU memory figure prints two lines per step from C++
    ("profiler_start" / "profiler_stop"), which no logging setting turns off. Python-level failures are not
    lost: :func:`~xtf_kernels.bench.worker.run_job` returns them as a status and a reason."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _measure_here(case: Case, providers: tuple[str, ...], device: torch.device, seed: int, warmup: int,
                  repeats: int) -> tuple[list[dict], str]:
    sides, method = [], ""
    for provider in providers:
        job = {"case": case.to_dict(), "provider": provider, "device": device.type, "seed": seed,
               "warmup": warmup, "repeats": repeats, "memory": True}
        with _native_stderr_silenced():
            result = run_job(job, single=False)
        samples = result["samples_ms"]
        method = method or result["mem_method"]
        sides.append(_side(provider, result["status"], result["reason"], result["peak_bytes"],
                           result["extra_bytes"], statistics.median(samples) if samples else None, case.tokens))
    return sides, method


def _measure_in_workers(case: Case, providers: tuple[str, ...], device: torch.device,
                        seed: int) -> tuple[list[dict], str]:
    settings = RunSettings.for_device(device, seed=seed, timeout_s=600.0)
    rows = run_bench([SuiteEntry(case, providers)], settings, log=lambda _message: None)
    sides = [
        _side(row.provider, row.status, row.reason, None if row.peak_gib is None else round(row.peak_gib * _GIB),
              None if row.extra_gib is None else round(row.extra_gib * _GIB), row.ms, case.tokens)
        for row in rows
    ]
    return sides, next((row.mem_method for row in rows if row.mem_method), "")


def compare_memory(*, tokens: int, hidden: int, vocab: int, device: torch.device, seed: int, cpu_warmup: int = 1,
                   cpu_repeats: int = 3) -> dict:
    """Measure both providers at (tokens, hidden, vocab) fp32 fwd_bwd on ``device``: the report's ``memory``.

    A CPU step at V = 128256 takes about a second on 2 cores, so the CPU gets ``cpu_warmup`` untimed and
    ``cpu_repeats`` timed steps; a GPU step takes milliseconds and gets the benchmark's GPU defaults
    (3 warm-up, 10 timed).
    """
    case = Case(tokens=tokens, hidden=hidden, vocab=vocab, mode="fwd_bwd", dtype="float32")
    providers = (fused_provider(device), MATERIALISED_PROVIDER)
    if device.type == "cuda":
        (fused, materialised), method = _measure_in_workers(case, providers, device, seed)
    else:
        (fused, materialised), method = _measure_here(case, providers, device, seed, cpu_warmup, cpu_repeats)
    f_extra, m_extra = fused["extra_bytes"], materialised["extra_bytes"]
    return {
        "tokens": tokens, "hidden": hidden, "vocab": vocab, "dtype": "float32", "mode": "fwd_bwd",
        "device": device_description(device), "method": method, "fused": fused, "materialised": materialised,
        "extra_ratio": m_extra / f_extra if f_extra and m_extra is not None else None,
    }
