"""Path selection under memory pressure: the chunk size, the kernels launched and the result of one training
step are the same with most of the device held by PyTorch's caching allocator (steady-state training:
cudaMemGetInfo's "free" small, the allocator's cache large) as on an idle device; the step's time in both
is reported. The earlier policy read the free memory, so it changed chunk size and, below ~6 GiB free,
switched "auto" to the fused path."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity
from torch.profiler import profile

import xtf_kernels as xk
from xtf_kernels.ops.chunking import resolve_chunk_size

from .support import gib
from .support import make_head
from .support import timed

pytestmark = pytest.mark.cuda


def _step(head):
    loss = xk.linear_cross_entropy(head.hidden, head.weight, head.targets)  # backend="auto", the default
    return (loss.detach(), *torch.autograd.grad(loss, head.leaves))


def _kernels(head, device):
    """The distinct kernel (GPU) or operator (CPU) names one step runs."""
    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        _step(head)
    wanted = torch.autograd.DeviceType.CUDA if device.type == "cuda" else torch.autograd.DeviceType.CPU
    return sorted({e.name for e in prof.events() if e.device_type == wanted})


def _hold_cache(device, leave_free: int) -> int:
    """Allocate in 1 GiB blocks until the device has ``leave_free`` bytes free, then free the blocks: the
    caching allocator keeps them reserved, as in training. Returns the bytes now reserved."""
    if device.type != "cuda":
        return 0
    blocks = []
    while torch.cuda.mem_get_info(device)[0] > leave_free + 2**30:
        blocks.append(torch.empty(2**30, dtype=torch.uint8, device=device))
    del blocks
    return torch.cuda.memory_reserved(device)


def test_auto_path_and_chunks_ignore_memory_pressure(target, monkeypatch, report):
    for name in ("XTF_TRITON_PATH", "XTF_CHUNK_SIZE", "XTF_CHUNK_MEMORY_MB"):
        monkeypatch.delenv(name, raising=False)
    tokens, hidden, vocab = target.size(16384, 64), target.size(4096, 32), target.size(128256, 1000)
    head = make_head(tokens, hidden, vocab, torch.bfloat16, target.device, seed=6)
    chunk_args = dict(rows=tokens, vocab=vocab, device=target.device, half_precision=True)

    _step(head)  # warm-up: compilation and autotuning stay out of the timings
    calm_chunk = resolve_chunk_size(None, **chunk_args)
    calm_kernels = _kernels(head, target.device)
    calm, calm_ms = timed(lambda: _step(head), target.device)
    calm_free = torch.cuda.mem_get_info(target.device)[0] if target.device.type == "cuda" else 0

    reserved = _hold_cache(target.device, leave_free=4 * 2**30)
    tight_free = torch.cuda.mem_get_info(target.device)[0] if target.device.type == "cuda" else 0
    tight_chunk = resolve_chunk_size(None, **chunk_args)
    tight_kernels = _kernels(head, target.device)
    tight, tight_ms = timed(lambda: _step(head), target.device)
    if target.device.type == "cuda":
        torch.cuda.empty_cache()  # hand the held cache back before the next check

    report("memory_pressure", tokens=tokens, hidden=hidden, vocab=vocab, chunk_calm=calm_chunk,
           chunk_pressure=tight_chunk, free_gib_calm=round(gib(calm_free), 2),
           free_gib_pressure=round(gib(tight_free), 2), reserved_gib_pressure=round(gib(reserved), 2),
           step_ms_calm=round(calm_ms, 2), step_ms_pressure=round(tight_ms, 2),
           kernels_only_calm=sorted(set(calm_kernels) - set(tight_kernels)),
           kernels_only_pressure=sorted(set(tight_kernels) - set(calm_kernels)), kernels=calm_kernels)
    assert tight_chunk == calm_chunk
    assert tight_kernels == calm_kernels
    assert all(torch.equal(a, b) for a, b in zip(calm, tight)), "the step's result changed under memory pressure"
