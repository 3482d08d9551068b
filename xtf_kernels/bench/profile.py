"""Where one training step's time goes: a ``torch.profiler`` breakdown by kind of kernel.

On a GPU each kernel's device time is put in one category by its name: GEMM (cuBLAS / CUTLASS: the names
hold gemm, nvjet, xmma, cutlass or cublas), the row kernel (the Triton or CUDA kernel that turns a logits
chunk into its gradient), the Triton fused path's tile kernels, fill (zeroing), copy / elementwise
(casts, scaling, adds), reduction and other. On the CPU (the rehearsal) the same is done with the self
CPU time of each aten operator. The GEMMs are the work a fused loss cannot avoid (6 N H V FLOP);
everything else is overhead to shrink.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.profiler import ProfilerActivity
from torch.profiler import profile

from .timing import time_step

# (category, substrings of a lower-cased kernel or operator name), first match wins.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("row kernel", ("row_kernel", "row_pass", "row_stats", "row_finalize", "_row_")),
    # The Triton fused path's kernels (xtf_kernels/ops/_triton/fused*.py).
    ("fused", ("fused", "_statistics_kernel", "_target_logit_kernel", "_grad_hidden_kernel", "_grad_weight_kernel")),
    ("GEMM", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "aten::mm", "aten::addmm", "aten::bmm", "matmul")),
    ("fill", ("fill", "zero")),
    ("copy / elementwise", ("copy", "elementwise", "vectorized", "memcpy", "memset", "aten::to", "aten::mul",
                            "aten::add", "aten::div", "aten::sub", "cast")),
    ("reduction", ("reduce", "aten::sum", "aten::max", "logsumexp")),
)


def category(name: str) -> str:
    lowered = name.lower()
    for label, needles in CATEGORIES:
        if any(needle in lowered for needle in needles):
            return label
    return "other"


class Breakdown(NamedTuple):
    """Time per category and per kernel (ms), the profiled total, and a separately timed step (median ms)."""

    device: str
    total_ms: float
    step_ms: float
    by_category: dict[str, float]
    top_kernels: list[tuple[str, str, int, float]]

    def table(self) -> str:
        lines = [f"profiled kernel time {self.total_ms:.3f} ms on {self.device}; step {self.step_ms:.3f} ms "
                 "(median, CUDA events or perf_counter, outside the profiler)", "", "category             ms  share"]
        for label, ms in sorted(self.by_category.items(), key=lambda item: -item[1]):
            share = ms / self.total_ms if self.total_ms else 0.0
            lines.append(f"{label:<18} {ms:>7.3f}  {share:5.1%}")
        lines += ["", "calls        ms  category            kernel"]
        for name, label, calls, ms in self.top_kernels:
            lines.append(f"{calls:>5} {ms:>9.3f}  {label:<18}  {name[:110]}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self._asdict(), indent=1)


def profile_step(step: Callable[[], object], device: torch.device, *, warmup: int = 2, repeats: int = 5,
                 top: int = 25) -> Breakdown:
    """Time ``step`` (median of ``repeats`` after ``warmup``), then profile one more call of it."""
    timing = time_step(step, device, warmup=warmup, repeats=repeats)
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        step()
        if on_gpu:
            torch.cuda.synchronize(device)
    wanted = torch.autograd.DeviceType.CUDA if on_gpu else torch.autograd.DeviceType.CPU
    kernels = []
    for event in prof.key_averages():
        if event.device_type != wanted:
            continue
        us = event.self_device_time_total if on_gpu else event.self_cpu_time_total
        if us > 0:
            kernels.append((event.key, category(event.key), event.count, us / 1e3))
    kernels.sort(key=lambda k: -k[3])
    by_category: dict[str, float] = {}
    for _name, label, _calls, ms in kernels:
        by_category[label] = by_category.get(label, 0.0) + ms
    return Breakdown(
        device=str(device), total_ms=sum(k[3] for k in kernels), step_ms=statistics.median(timing.samples_ms),
        by_category=by_category, top_kernels=kernels[:top],
    )
