"""Measure jobs in this process: ``python -m xtf_kernels.bench.worker JOBS.json``.

The runner starts one worker per job on the CPU (so peak RSS and the allocator start clean) and one per
provider on a GPU (so a crashing peer cannot take the others down). JOBS.json holds a list of jobs::

    {"case": Case.to_dict(), "provider": name, "device": "cpu" | "cuda", "seed": 0,
     "warmup": int, "repeats": int, "memory": bool}

Each result is printed as one line ``RESULT_PREFIX + json`` on stdout::

    {"provider", "status", "reason", "samples_ms", "loads_1m", "peak_bytes", "extra_bytes",
     "mem_method", "rss_extra_bytes"}

On the CPU the worker caps its address space at what the machine has free (plus what it already
maps), so a case too large for the machine fails here with status "oom" instead of waking the kernel's
OOM killer on a shared machine.
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import traceback
import warnings

import torch

from .cases import Case
from .inputs import make_inputs
from .memory import current_rss_bytes
from .memory import measure_peak
from .memory import peak_rss_bytes
from .providers import get_provider
from .timing import time_step

RESULT_PREFIX = "XTF_BENCH_RESULT "


def _meminfo_bytes(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _mapped_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError):
        return None


def cap_address_space() -> int | None:
    """Limit this process's address space to what it maps now plus the machine's available memory."""
    available, mapped = _meminfo_bytes("MemAvailable"), _mapped_bytes()
    if available is None or mapped is None:
        return None
    limit = mapped + int(available * 0.9)
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}"


def run_job(job: dict, *, single: bool) -> dict:
    """Measure one job; never raises (failures become a status and a reason)."""
    result = {
        "provider": job["provider"], "status": "ok", "reason": "", "samples_ms": [], "loads_1m": [],
        "peak_bytes": None, "extra_bytes": None, "mem_method": "", "rss_extra_bytes": None,
    }
    case = Case.from_dict(job["case"])
    device = torch.device(job["device"])
    provider = get_provider(job["provider"])
    unavailable = provider.check(device, case)
    if unavailable is not None:
        result.update(status=unavailable.status, reason=unavailable.reason)
        return result
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            inputs = make_inputs(case, device, job.get("seed", 0))
            rss_base = current_rss_bytes()
            step = provider.build(inputs, case)
            timing = time_step(step, device, warmup=job["warmup"], repeats=job["repeats"])
            result.update(samples_ms=timing.samples_ms, loads_1m=timing.loads_1m)
            if job.get("memory", True):
                peak = measure_peak(step, inputs)
                result.update(peak_bytes=peak.peak_bytes, extra_bytes=peak.extra_bytes, mem_method=peak.method)
            if single and device.type == "cpu" and rss_base is not None:
                result["rss_extra_bytes"] = max(0, peak_rss_bytes() - rss_base)
        notes = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
        if notes:
            result["reason"] = ("warnings: " + " | ".join(notes))[:600]
    except Exception as exc:  # noqa: BLE001 - a failing provider is a result, not a crash
        result.update(status="oom" if _is_oom(exc) else "error", reason=_one_line(exc), samples_ms=[])
        if job.get("traceback"):
            traceback.print_exc()
    finally:
        inputs = step = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m xtf_kernels.bench.worker JOBS.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        jobs = json.load(f)
    if not isinstance(jobs, list) or not jobs:
        print(f"{argv[0]}: expected a non-empty JSON list of jobs", file=sys.stderr)
        return 2
    if all(job["device"] == "cpu" for job in jobs):
        cap_address_space()
    for job in jobs:
        result = run_job(job, single=len(jobs) == 1)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
