"""How many token rows go into one logits chunk: a function of the shape, never of free memory.

Why shape only. The chunk size decides how the (N, V) work is cut into matmuls, so it decides the
floating-point summation order of d_weight and which path Triton's "auto" takes. An earlier policy took
``min(2 GiB, free / 4)`` from ``cudaMemGetInfo``; that "free" excludes the blocks PyTorch's caching
allocator holds, so it falls during steady-state training: the chunk size changed from step to step
(results not bitwise reproducible) and, below about 6 GiB free, "auto" switched to a path about 3.5x
slower. Here the size depends on (rows, vocab, whether a 16-bit gradient copy is kept, extra fp32
buffers, device type) and, on CUDA, the device's *total* memory, a fixed property of the card. Memory
pressure can make the chunk's allocation fail with the allocator's own out-of-memory error (then lower
XTF_CHUNK_MEMORY_MB); it can never change a result or a path.

Bytes per logit. One chunk holds a (C, V) fp32 logits buffer (which becomes the gradient in place), plus,
for 16-bit inputs with gradients, a (C, V) copy of that gradient in the input dtype for the two backward
matmuls, plus the extra fp32 buffers a row kernel asks for (softcap / entropy paths, a second model's
logits for the influence delta)::

    bytes per row = V * (4 + 4 * extra_fp32_buffers + 2 * [16-bit inputs with gradients])

Budget. XTF_CHUNK_MEMORY_MB when set; else 256 MiB on the CPU and, on CUDA, min(4 GiB, total / 16):
4 GiB on a 64 GiB or larger card (H100, H200, A100-80GB), about 2.5 GiB on an A100-40GB and 1.5 GiB on a
24 GiB card, so the chunk stays a small share of any card beside the fp32 d_weight (2.1 GB at V 128256,
H 4096) and the model.

Tiles and balance. The largest chunk is ``budget // bytes per row`` rounded down to whole GEMM row tiles
(256 rows on CUDA: cuBLAS's Hopper kernels and the Triton tiles use 64-, 128- or 256-row M tiles, so a
multiple of 256 ends on a whole tile of each; 64 on the CPU). The rows are then split into
``k = ceil(rows / largest)`` chunks of ``ceil(rows / k)`` rows rounded up to a whole tile: the fewest
chunks the budget allows, all equal and whole tiles but the last, so together they cover
``ceil(rows / tile)`` tiles, the fewest possible. Worked numbers, Llama-3 head (V 128256), bf16
with gradients (6 bytes per logit, 769,536 bytes per row), 4 GiB budget:

    largest = 4 GiB // 769,536 = 5581 -> 5376 rows (21 tiles of 256)
    N 16384 -> k = 4, chunks of 4096 (the old policy: 2752-row chunks, 5 x 2752 + 2624)
    N  4096 -> one chunk of 4096     (the old policy: 2752 + 1344)

Gemma-2 head (V 256000, bf16, 1,536,000 bytes per row): largest 2796 -> 2560, N 8192 -> 4 x 2048.
Why chunks of about 4096 rows are large enough (argued, not yet measured on a GPU): the d_hidden GEMM
of a 4096-row chunk at H 4096 has 512 output tiles of 128 x 256, 3.9 waves over an H200's 132 SMs, and
the logits GEMM 16,032; the fastest peers (QuACK, Liger's CuTe path) use 4096-row chunks too.

Environment flags (read here, at every call):
    XTF_CHUNK_SIZE       tokens per chunk, taken as given (no balancing); an explicit ``chunk_size=``
                         argument overrides it.
    XTF_CHUNK_MEMORY_MB  the per-chunk budget in MiB (replaces the default above, total memory included).
"""

from __future__ import annotations

import os

import torch

_MIB = 2**20
_CPU_BUDGET_BYTES = 256 * _MIB
_CUDA_BUDGET_BYTES = 4096 * _MIB
# The CUDA budget is at most this fraction of the card's total memory (1/16: 1.5 GiB on a 24 GiB card).
_CUDA_TOTAL_MEMORY_DIVISOR = 16
_TILE_ROWS = {"cuda": 256, "cpu": 64}
_DEFAULT_TILE_ROWS = 64


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
    """The per-chunk buffer budget for ``device`` in bytes: XTF_CHUNK_MEMORY_MB, else the default of the
    module docstring. Reads the device's total memory on CUDA, never its free memory."""
    budget_mb = _env_int("XTF_CHUNK_MEMORY_MB")
    if budget_mb is not None:
        return budget_mb * _MIB
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return min(_CUDA_BUDGET_BYTES, total // _CUDA_TOTAL_MEMORY_DIVISOR)
    return _CPU_BUDGET_BYTES


def tile_rows(device: torch.device) -> int:
    """Rows of one GEMM M tile that chunks are a multiple of on ``device`` (256 on CUDA, 64 elsewhere)."""
    return _TILE_ROWS.get(device.type, _DEFAULT_TILE_ROWS)


def max_chunk_rows(*, vocab: int, device: torch.device, half_precision: bool, extra_fp32_buffers: int = 0) -> int:
    """The largest chunk the budget holds, in whole tiles when it holds at least one (>= 1).

    This, not the balanced size :func:`resolve_chunk_size` returns, is what a path choice should compare
    with a threshold: balancing can shrink a chunk below the largest without any shortage of memory.
    """
    bytes_per_row = vocab * (4 + 4 * extra_fp32_buffers + (2 if half_precision else 0))
    largest = max(1, memory_budget_bytes(device) // max(bytes_per_row, 1))
    tile = tile_rows(device)
    return largest - largest % tile if largest >= tile else largest


def resolve_chunk_size(
    chunk_size: int | None,
    *,
    rows: int,
    vocab: int,
    device: torch.device,
    half_precision: bool,
    extra_fp32_buffers: int = 0,
) -> int:
    """Rows per chunk for a pass over ``rows`` rows, in [1, max(rows, 1)].

    The explicit ``chunk_size``, else XTF_CHUNK_SIZE, else balanced whole-tile chunks under the budget
    (the module docstring). ``half_precision``: the chunk also holds a 16-bit gradient copy;
    ``extra_fp32_buffers``: further (C, V) fp32 buffers per chunk. The chunks are
    ``range(0, rows, result)``: all equal but the last, which is never larger.
    """
    rows = max(rows, 1)
    if chunk_size is None:
        chunk_size = _env_int("XTF_CHUNK_SIZE")
    if chunk_size is not None:
        return max(1, min(chunk_size, rows))
    largest = max_chunk_rows(vocab=vocab, device=device, half_precision=half_precision,
                             extra_fp32_buffers=extra_fp32_buffers)
    if rows <= largest:
        return rows
    count = -(-rows // largest)
    balanced = -(-rows // count)
    tile = tile_rows(device)
    if largest >= tile:
        # Whole tiles; largest is a multiple of tile and >= ceil(rows / count), so this stays <= largest.
        balanced = min(largest, -(-balanced // tile) * tile)
    return balanced
