"""Two measurements behind the chunked paths' defaults, taken in one process on one device.

chunk sweep  forward + backward (mean loss, gradients to hidden and weight) at a fixed N on each chunked
             path with ``chunk_size`` forced to each value: does the default (:mod:`xtf_kernels.ops.chunking`:
             4096 rows for the Llama-3 head at N 16384) sit on the plateau, and how much did the old
             2752-row chunks cost?
crossover    the same step at growing N on the Triton fused path and on the Triton chunked path with its
             default chunks: the N below which the fused path wins, i.e. its place in Triton's "auto".

Each point is the median of ``repeats`` timed steps after ``warmup`` (CUDA events on a GPU), with the
effective TFLOP/s 6NHV / time. A path that cannot run here is reported with the reason, not skipped.
"""

from __future__ import annotations

import os
import statistics
from typing import NamedTuple

import torch

from ..errors import BackendUnavailableError
from ..ops.registry import resolve_backend
from .cases import Case
from .inputs import make_inputs
from .providers.base import training_step
from .timing import time_step


class SweepPath(NamedTuple):
    """``backend=`` and, for Triton, the XTF_TRITON_PATH it runs under."""

    name: str
    backend: str
    triton_path: str | None = None


TRITON_CHUNKED = SweepPath("triton-chunked", "triton", "chunked")
TRITON_FUSED = SweepPath("triton-fused", "triton", "fused")
CUDA_EXTENSION = SweepPath("cuda", "cuda")
TORCH = SweepPath("torch", "torch")


class Point(NamedTuple):
    sweep: str
    path: str
    tokens: int
    chunk: int | None
    ms: float | None
    tflops: float | None
    note: str = ""


def _unavailable(path: SweepPath, device: torch.device) -> str | None:
    try:
        resolve_backend(path.backend, device)
    except BackendUnavailableError as exc:
        return str(exc)
    return None


def measure(case: Case, path: SweepPath, device: torch.device, *, chunk: int | None, warmup: int,
            repeats: int, sweep: str) -> Point:
    """One point: ``case`` (fwd_bwd) on ``path`` with ``chunk_size=chunk`` (None: the default policy)."""
    from .. import functional

    reason = _unavailable(path, device)
    if reason is not None:
        return Point(sweep, path.name, case.tokens, chunk, None, None, f"missing: {reason}")
    previous = os.environ.get("XTF_TRITON_PATH")
    if path.triton_path:
        os.environ["XTF_TRITON_PATH"] = path.triton_path
    try:
        inputs = make_inputs(case, device)
        step = training_step(inputs, case, lambda: functional.linear_cross_entropy(
            inputs.hidden, inputs.weight, inputs.targets, backend=path.backend, chunk_size=chunk))
        ms = statistics.median(time_step(step, device, warmup=warmup, repeats=repeats).samples_ms)
        return Point(sweep, path.name, case.tokens, chunk, ms, case.flops / (ms * 1e-3) / 1e12)
    except torch.OutOfMemoryError as exc:
        return Point(sweep, path.name, case.tokens, chunk, None, None, f"oom: {str(exc)[:120]}")
    finally:
        if previous is None:
            os.environ.pop("XTF_TRITON_PATH", None)
        else:
            os.environ["XTF_TRITON_PATH"] = previous
        if device.type == "cuda":
            torch.cuda.empty_cache()


def chunk_sweep(head: Case, paths: list[SweepPath], chunks: list[int], device: torch.device, *, warmup: int = 1,
                repeats: int = 5) -> list[Point]:
    points = []
    for path in paths:
        points.append(measure(head, path, device, chunk=None, warmup=warmup, repeats=repeats, sweep="chunk"))
        points += [measure(head, path, device, chunk=c, warmup=warmup, repeats=repeats, sweep="chunk")
                   for c in chunks]
    return points


def crossover(head: Case, paths: list[SweepPath], tokens: list[int], device: torch.device, *, warmup: int = 1,
              repeats: int = 5) -> list[Point]:
    cases = [Case(tokens=n, hidden=head.hidden, vocab=head.vocab, dtype=head.dtype, model=head.model) for n in tokens]
    return [measure(case, path, device, chunk=None, warmup=warmup, repeats=repeats, sweep="crossover")
            for case in cases for path in paths]


def format_points(points: list[Point]) -> str:
    lines = ["sweep      path             tokens  chunk        ms  TFLOP/s  note"]
    for p in points:
        chunk = "default" if p.chunk is None else str(p.chunk)
        ms = "-" if p.ms is None else f"{p.ms:.3f}"
        tflops = "-" if p.tflops is None else f"{p.tflops:.1f}"
        lines.append(f"{p.sweep:<10} {p.path:<15} {p.tokens:>7} {chunk:>7} {ms:>9} {tflops:>8}  {p.note[:100]}")
    return "\n".join(lines)
