"""How many token rows go into one logits chunk.

One chunk holds a (C, V) fp32 logits buffer (which becomes the gradient in place), plus, for half
precision inputs, a (C, V) copy of that gradient in the input dtype for the two backward matmuls, plus
whatever extra fp32 buffers the row kernel needs (softcap / entropy paths). So

    bytes per chunk = C * V * (4 + 4 * extra_fp32_buffers + 2 * [dtype is 16-bit])

and C = budget // (V * bytes per row). Examples: at V = 128256 in fp32 a 256 MiB budget gives C = 523
rows (262 MiB at C = 512); on CUDA the 2 GiB default gives C = 2796 rows in bf16 (4 + 2 bytes/logit),
large enough that the three matmuls per chunk run near the GEMM rate (M >= 2048 on an H200).

Environment flags (read here, at every call):
    XTF_CHUNK_SIZE       tokens per chunk, overrides the budget (an explicit ``chunk_size=`` argument
                         overrides this).
    XTF_CHUNK_MEMORY_MB  the per-chunk memory budget in MiB (default 256 on CPU, 2048 on CUDA, capped at
                         a quarter of the free device memory).
"""

from __future__ import annotations

import os

import torch

_CPU_BUDGET_MB = 256
_CUDA_BUDGET_MB = 2048


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} must be a positive integer") from exc
    if value <= 0:
        raise ValueError(f"environment variable {name}={raw!r} must be a positive integer")
    return value


def memory_budget_bytes(device: torch.device) -> int:
    """The per-chunk buffer budget for ``device`` in bytes."""
    budget_mb = _env_int("XTF_CHUNK_MEMORY_MB")
    if budget_mb is not None:
        return budget_mb * 2**20
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return min(_CUDA_BUDGET_MB * 2**20, free // 4)
    return _CPU_BUDGET_MB * 2**20


def resolve_chunk_size(
    chunk_size: int | None,
    *,
    rows: int,
    vocab: int,
    device: torch.device,
    half_precision: bool,
    extra_fp32_buffers: int = 0,
) -> int:
    """Tokens per chunk: the explicit argument, else XTF_CHUNK_SIZE, else derived from the budget."""
    if chunk_size is None:
        chunk_size = _env_int("XTF_CHUNK_SIZE")
    if chunk_size is None:
        bytes_per_row = vocab * (4 + 4 * extra_fp32_buffers + (2 if half_precision else 0))
        chunk_size = max(1, memory_budget_bytes(device) // max(bytes_per_row, 1))
        if chunk_size >= 128:
            chunk_size -= chunk_size % 64  # whole GEMM tiles
    return max(1, min(chunk_size, max(rows, 1)))
