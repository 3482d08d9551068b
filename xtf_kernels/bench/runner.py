"""Run a set of (case, providers) side by side, each measurement in a worker process, and build rows.

CPU: one worker process per (case, provider, round), so every peak-RSS figure starts clean; providers of
a case alternate (A B, then B A in the next round, ...) so a change of load on a shared machine hits
them alike; the median is over every round's samples. GPU: one worker per provider and round running
all its cases (CUDA context start-up is paid once per provider, and a peer that crashes the context
takes only its own rows down).

A provider that cannot run a case is reported as a row with status "missing" / "unsupported" and the
reason; a worker that fails, runs out of memory or times out gives a row with that status.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone
from pathlib import Path
from typing import NamedTuple

import torch

from .cases import Case
from .environment import device_description
from .environment import git_sha
from .environment import package_version
from .providers import Provider
from .providers import get_provider
from .store import ResultRow
from .worker import RESULT_PREFIX

_GIB = 2**30
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


class SuiteEntry(NamedTuple):
    """A case and the providers to time on it (names, in table order)."""

    case: Case
    providers: tuple[str, ...]


@dataclass(frozen=True)
class RunSettings:
    """How to measure: ``warmup`` untimed and ``repeats`` timed steps per worker, ``rounds`` workers per
    (case, provider); ``memory`` adds one measured step for peak memory in the first round. ``run_id``
    (default: the start time and process id) lets runs split over several invocations (e.g. under a
    per-command time limit) share one id, so their rows form one table."""

    device: torch.device
    warmup: int
    repeats: int
    rounds: int = 1
    memory: bool = True
    timeout_s: float = 3600.0
    seed: int = 0
    run_id: str | None = None

    def __post_init__(self):
        if self.warmup < 0 or self.repeats < 1 or self.rounds < 1:
            raise ValueError(
                f"warmup must be >= 0, repeats >= 1 and rounds >= 1, got {self.warmup}, {self.repeats}, {self.rounds}"
            )
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")

    @classmethod
    def for_device(cls, device: torch.device, **overrides) -> RunSettings:
        """CUDA: 3 warm-up steps and the median of 10 (the whole GPU suite then fits in about 10 minutes);
        CPU: 1 warm-up step and the median of 3."""
        defaults = dict(warmup=3, repeats=10, timeout_s=1200.0) if device.type == "cuda" else dict(warmup=1, repeats=3)
        defaults.update({k: v for k, v in overrides.items() if v is not None})
        return cls(device=device, **defaults)


class _RunInfo(NamedTuple):
    run_id: str
    timestamp: str
    device: str
    device_type: str
    torch: str
    triton: str
    xtf: str
    git_sha: str
    threads: int


def _run_info(device: torch.device, run_id: str | None = None) -> _RunInfo:
    now = datetime.now(timezone.utc)
    return _RunInfo(
        run_id=run_id or now.strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}",
        timestamp=now.isoformat(timespec="seconds"),
        device=device_description(device),
        device_type=device.type,
        torch=torch.__version__,
        triton=package_version("triton"),
        xtf=package_version("xtf_kernels"),
        git_sha=git_sha(),
        threads=torch.get_num_threads(),
    )


def _worker_env(provider: Provider) -> dict[str, str]:
    env = dict(os.environ)
    env.update(dict(provider.env))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH", "")) if p)
    return env


def _spawn(jobs: list[dict], provider: Provider, timeout_s: float) -> list[dict]:
    """Run ``jobs`` in one worker process; a result per job (failures included)."""
    with tempfile.TemporaryDirectory(prefix="xtf-bench-") as tmp:
        jobs_path = os.path.join(tmp, "jobs.json")
        with open(jobs_path, "w") as f:
            json.dump(jobs, f)
        command = [sys.executable, "-m", "xtf_kernels.bench.worker", jobs_path]
        try:
            done = subprocess.run(
                command, env=_worker_env(provider), capture_output=True, text=True, timeout=timeout_s, check=False,
            )
            stdout, stderr, failure = done.stdout, done.stderr, None
            if done.returncode < 0:
                failure = ("error", f"worker killed by signal {-done.returncode} (9 is usually the OOM killer)")
            elif done.returncode != 0:
                failure = ("error", f"worker exited with status {done.returncode}")
        except subprocess.TimeoutExpired as exc:
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            failure = ("timeout", f"worker did not finish within {timeout_s:.0f} s")
    results = [json.loads(line[len(RESULT_PREFIX):]) for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    status, reason = failure or ("error", "worker printed no result")
    tail = " ".join(stderr.strip().splitlines()[-3:])[-300:]
    if tail:
        reason = f"{reason}; stderr: {tail}"
    for _job in jobs[len(results):]:
        results.append({"provider": provider.name, "status": status, "reason": reason, "samples_ms": [],
                        "loads_1m": [], "peak_bytes": None, "extra_bytes": None, "mem_method": "",
                        "rss_extra_bytes": None})
    return results


def _job(case: Case, provider: Provider, settings: RunSettings, memory: bool) -> dict:
    return {
        "case": case.to_dict(), "provider": provider.name, "device": settings.device.type, "seed": settings.seed,
        "warmup": settings.warmup, "repeats": settings.repeats, "memory": memory,
    }


def _gib(value: int | None) -> float | None:
    return None if value is None else value / _GIB


def _row(info: _RunInfo, case: Case, provider: Provider, results: list[dict], warmup: int) -> ResultRow:
    samples = [s for r in results for s in r["samples_ms"]]
    loads = [x for r in results for x in r["loads_1m"]]
    failed = [r for r in results if r["status"] != "ok"]
    status = failed[0]["status"] if failed else "ok"
    reasons = list(dict.fromkeys(r["reason"] for r in results if r["reason"]))
    if failed and samples:
        reasons.insert(0, f"{len(failed)} of {len(results)} rounds failed")
    if status == "ok" and not samples:
        status, reasons = "error", ["no timing samples"]
    memory = next((r for r in results if r["peak_bytes"] is not None), None)
    rss = [r["rss_extra_bytes"] for r in results if r["rss_extra_bytes"] is not None]
    ms = statistics.median(samples) if samples else None
    return ResultRow(
        run_id=info.run_id, timestamp=info.timestamp, device=info.device, device_type=info.device_type,
        torch=info.torch, triton=info.triton, xtf=info.xtf, git_sha=info.git_sha,
        provider=provider.name, family=provider.family, path=provider.path,
        peer_version=package_version(provider.package),
        model=case.model, mode=case.mode, dtype=case.dtype, tokens=case.tokens, hidden=case.hidden,
        vocab=case.vocab, softcap=case.softcap, keep=float(case.keep), kept_tokens=case.kept_tokens,
        status=status, reason=" | ".join(reasons)[:800],
        ms=ms, ms_min=min(samples) if samples else None, ms_max=max(samples) if samples else None,
        samples=len(samples), samples_ms=";".join(f"{s:.3f}" for s in samples), warmup=warmup,
        tflops=case.flops / (ms * 1e-3) / 1e12 if ms else None,
        peak_gib=_gib(memory["peak_bytes"]) if memory else None,
        extra_gib=_gib(memory["extra_bytes"]) if memory else None,
        rss_extra_gib=_gib(max(rss)) if rss else None,
        mem_method=memory["mem_method"] if memory else "",
        load_1m=statistics.fmean(loads) if loads else None,
        loads_1m=";".join(f"{x:.2f}" for x in loads),
        threads=info.threads,
    )


def run(
    entries: list[SuiteEntry],
    settings: RunSettings,
    *,
    log: Callable[[str], None] | None = None,
    on_rows: Callable[[list[ResultRow]], None] | None = None,
) -> list[ResultRow]:
    """Measure every (case, provider) of ``entries``; rows in entry order, providers in the entry's order.

    ``on_rows`` receives each row once, as soon as it is complete (the unavailable ones first, then each
    worker's as it ends), so a caller can record them before a run that is cut short would lose them.
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    info = _run_info(settings.device, settings.run_id)
    results: dict[tuple[int, str], list[dict]] = {}
    runnable: list[tuple[int, Provider]] = []

    def emit(keys: list[tuple[int, str]]) -> None:
        if on_rows is not None and keys:
            on_rows([_row(info, entries[i].case, get_provider(name), results[(i, name)], settings.warmup)
                     for i, name in keys])

    for index, entry in enumerate(entries):
        for name in entry.providers:
            provider = get_provider(name)
            unavailable = provider.check(settings.device, entry.case)
            if unavailable is None:
                runnable.append((index, provider))
            else:
                results[(index, name)] = [{"provider": name, "status": unavailable.status,
                                           "reason": unavailable.reason, "samples_ms": [], "loads_1m": [],
                                           "peak_bytes": None, "extra_bytes": None, "mem_method": "",
                                           "rss_extra_bytes": None}]
                log(f"  {name:<20} {entry.case.label}: {unavailable.status} ({unavailable.reason})")
    emit(list(results))

    total = len(runnable) * settings.rounds
    done = 0
    for round_index in range(settings.rounds):
        memory = settings.memory and round_index == 0
        if settings.device.type == "cuda":
            batches = []
            for provider in dict.fromkeys(p for _i, p in runnable):
                indices = [i for i, p in runnable if p is provider]
                batches.append((provider, indices))
        else:
            batches = []
            for index in range(len(entries)):
                providers = [p for i, p in runnable if i == index]
                if round_index % 2:
                    providers.reverse()
                batches.extend((p, [index]) for p in providers)
        for provider, indices in batches:
            begin = time.perf_counter()
            jobs = [_job(entries[i].case, provider, settings, memory) for i in indices]
            for i, result in zip(indices, _spawn(jobs, provider, settings.timeout_s)):
                results.setdefault((i, provider.name), []).append(result)
                done += 1
                samples = result["samples_ms"]
                what = f"{statistics.median(samples):.1f} ms" if samples else f"{result['status']}: {result['reason']}"
                wall = time.perf_counter() - begin
                log(f"[{done}/{total}] round {round_index + 1} {provider.name:<20} {entries[i].case.label}: {what}"
                    f" ({wall:.0f} s wall)")
            if round_index == settings.rounds - 1:
                emit([(i, provider.name) for i in indices])

    rows = []
    for index, entry in enumerate(entries):
        for name in entry.providers:
            rows.append(_row(info, entry.case, get_provider(name), results[(index, name)], settings.warmup))
    return rows
