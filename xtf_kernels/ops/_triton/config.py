"""Launch configurations of the Triton kernels: tile sizes, warps, vocabulary splits.

Every choice here is a heuristic with its reason written next to it. None of them has been tuned on a
GPU yet: the tile sizes are the usual starting points of Triton matmuls on Hopper (128 x 128 x 64 tiles,
8 warps, 3 stages for 16-bit inputs), and the figures to confirm or replace them are the fused path's
effective TFLOP/s at the Llama-3 head (H 4096, V 128256) for N = 4096 and 16384, swept over
:class:`TileConfig` values passed to :func:`xtf_kernels.ops._triton.fused.fused_head_pass`.

Environment flag (read once, at import, as Triton itself reads it):
    TRITON_INTERPRET=1  runs every kernel on CPU tensors, one program at a time (tests only). Tiles then
                        shrink to 16-32 so the tiny test shapes still cross several tiles in every loop,
                        and the machine is treated as having 4 multiprocessors so the vocabulary-split
                        code paths run too.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton

from .interpreter_compat import patch_scalar_index

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if INTERPRET:
    patch_scalar_index()

# Multiprocessor count assumed under the interpreter: small, so a 13-row test already splits V in 4.
_INTERPRET_MULTIPROCESSORS = 4


class RowConfig(NamedTuple):
    """One program per logits row; it walks the row in blocks of ``block_v`` columns."""

    block_v: int
    num_warps: int


def row_config(vocab: int) -> RowConfig:
    """Block and warps of the per-row kernels of the chunked path (memory-bound: 2 reads + 1 write per logit).

    With ``block_v`` = 8192 and 16 warps each thread holds 8192 / 512 = 16 fp32 values per block: four
    16-byte vector loads in flight per thread, and a V = 128256 row takes 16 blocks. Rows are thousands
    per chunk, so the grid alone fills the GPU and no block-level split of a row is needed.
    """
    if INTERPRET:
        return RowConfig(block_v=min(64, triton.next_power_of_2(vocab)), num_warps=1)
    block_v = min(8192, max(triton.next_power_of_2(vocab), 128))
    return RowConfig(block_v=block_v, num_warps=max(1, min(16, block_v // 512)))


class TileConfig(NamedTuple):
    """Tiles of the fused kernels.

    block_m x block_n: the logits tile (rows x vocabulary) held in registers in fp32.
    block_k: the reduction step over H when forming that tile with ``tl.dot``.
    block_h: the width of the H slices of d_hidden / d_weight updated from one gradient tile.
    """

    block_m: int
    block_n: int
    block_k: int
    block_h: int
    num_warps: int
    num_stages: int


def tile_config(dtype: torch.dtype) -> TileConfig:
    """Default tiles for ``dtype`` inputs (provisional, see the module docstring).

    16-bit: 128 x 128 fp32 logits tile = 64 KiB of registers over 8 warps (64 per thread), 64-wide K steps
    so one pipeline stage holds 2 x 16 KiB of operands and 3 stages fit in 96 KiB of shared memory.
    fp32: ``tl.dot`` runs in IEEE fp32 (no tensor cores), so smaller 64 x 64 tiles and 32-wide K steps keep
    the operands of 2 stages within 32 KiB.
    """
    if INTERPRET:
        return TileConfig(block_m=16, block_n=32, block_k=16, block_h=16, num_warps=1, num_stages=1)
    if dtype == torch.float32:
        return TileConfig(block_m=64, block_n=64, block_k=32, block_h=64, num_warps=4, num_stages=2)
    return TileConfig(block_m=128, block_n=128, block_k=64, block_h=64, num_warps=8, num_stages=3)


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of ``tl.dot``: IEEE fp32 for fp32 inputs so fp32 results hold fp32 tolerances
    (tf32 would round the operands to 10 mantissa bits); ignored for 16-bit inputs."""
    return "ieee" if dtype == torch.float32 else "tf32"


def multiprocessor_count(device: torch.device) -> int:
    if INTERPRET or device.type != "cuda":
        return _INTERPRET_MULTIPROCESSORS
    return torch.cuda.get_device_properties(device).multi_processor_count


class VocabSplit(NamedTuple):
    """The vocabulary cut into ``splits`` contiguous ranges of ``cols_per_split`` columns (the last may be
    shorter); ``cols_per_split`` is a multiple of the tile width, so no tile straddles two ranges."""

    splits: int
    cols_per_split: int


def vocab_split(rows: int, vocab: int, block_m: int, block_n: int, device: torch.device, *, waves: int,
                max_splits: int) -> VocabSplit:
    """Split V so that row blocks x splits gives about ``waves`` programs per multiprocessor.

    A fused pass over N rows has only cdiv(N, block_m) row blocks (32 at N = 4096 with 128-row tiles, on an
    H200's 132 multiprocessors), so V is cut into ranges processed by separate programs whose partial
    results are merged afterwards in a fixed order (deterministic). Each split costs O(N) (statistics)
    or O(N H) (d_hidden partials) extra memory, hence ``max_splits``.
    """
    row_blocks = triton.cdiv(max(rows, 1), block_m)
    vocab_tiles = triton.cdiv(vocab, block_n)
    wanted = triton.cdiv(waves * multiprocessor_count(device), row_blocks)
    splits = max(1, min(wanted, max_splits, vocab_tiles))
    cols = triton.cdiv(vocab_tiles, splits) * block_n
    return VocabSplit(splits=triton.cdiv(vocab, cols), cols_per_split=cols)
