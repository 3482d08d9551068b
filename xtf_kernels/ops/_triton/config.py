"""Launch configurations of the Triton kernels: tile sizes, warps, vocabulary splits.

Every choice here is a heuristic with its reason written next to it. None of them has been timed on a
GPU yet: the tiles start from the usual Triton matmul tiles on Hopper (128 x 128 x 64, 8 warps, 3 stages
for 16-bit inputs) and were shrunk only where compiling for sm_90 showed register spills. The figures to
confirm or replace them are the fused path's effective TFLOP/s at the Llama-3 head (H 4096, V 128256) for
N = 4096 and 16384, swept over :class:`FusedConfig` values passed to
:func:`xtf_kernels.ops._triton.fused.fused_head_pass`, and the chunked path's row-kernel time per chunk
over ``row_config`` choices. There is no autotuning: a tuned choice can differ between processes, and
with it the order of the fp32 sums, so fixed configurations keep results bitwise reproducible from run to
run; sweeping them belongs to the benchmark run.

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

    With ``block_v`` = 4096 and 16 warps each thread holds 4096 / 512 = 8 fp32 values per block, two 16-byte
    vector loads in flight per thread, and a V = 128256 row takes 32 blocks. Rows are thousands per chunk,
    so the grid alone fills the GPU and no split of a row is needed. Compiled for sm_90 this uses 57-58
    registers with every option on; 8192 columns over 16 warps spill 8 bytes on the fp32-only path.
    """
    if INTERPRET:
        return RowConfig(block_v=min(64, triton.next_power_of_2(vocab)), num_warps=1)
    block_v = min(4096, max(triton.next_power_of_2(vocab), 128))
    return RowConfig(block_v=block_v, num_warps=max(1, min(16, block_v // 256)))


class TileConfig(NamedTuple):
    """Tiles of one fused kernel.

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


class FusedConfig(NamedTuple):
    """Tiles of the fused kernels: statistics (forward), d_hidden, d_weight, and the two-model influence delta."""

    forward: TileConfig
    grad_hidden: TileConfig
    grad_weight: TileConfig
    influence: TileConfig


def fused_config(dtype: torch.dtype) -> FusedConfig:
    """Default tiles for ``dtype`` inputs (provisional, see the module docstring).

    Register and shared-memory figures below come from compiling the kernels for sm_90 (``triton.compile``
    to a cubin, read with ``cuobjdump --dump-resource-usage``), not from running them.

    16-bit: the forward uses 128 x 128 logits tiles with 64-wide K steps, 8 warps, 3 stages (96 KiB of
    shared memory, 255 registers, no spill for what the public ops ask: the mean logit with label smoothing,
    or the entropy; asking for both at once with softcap and bias spills 48 bytes). The backward kernels
    also hold the gradient tile and an fp32 (tile x block_h) product, and at 128 x 128 they spill (72-264
    bytes of stack with every option on), so each gets a 128 x 64 / 64 x 128 tile instead, keeping the long
    side where it pays: a d_hidden program reads and rewrites its fp32 (block_m x H) accumulator once per
    vocabulary tile, 4 block_m block_n H FLOP (recompute + product) per 8 block_m H bytes, i.e.
    block_n / 2 = 64 FLOP per byte at block_n = 128; a d_weight program does the same with its
    (block_n x H) rows once per row block, block_m / 2 = 64 FLOP per byte at block_m = 128. Both compile
    without spills (251-255 registers, 72-80 KiB shared).
    fp32: ``tl.dot`` runs in IEEE fp32 on the FMA units, which needs its operands in registers: the forward's
    64 x 64 tiles with 32-wide K steps compile without spills over 8 warps (with 4 they spill); the backward
    kernels, which also hold the product slice, fit only with 32 x 64 / 64 x 32 tiles over 4 warps
    (186-196 registers), the long side again where the accumulator traffic is.
    The influence delta holds two sets of row statistics and spills 8 bytes at 128 x 128: 128 x 64 tiles.
    """
    if INTERPRET:
        tiles = TileConfig(block_m=16, block_n=32, block_k=16, block_h=16, num_warps=1, num_stages=1)
        return FusedConfig(tiles, tiles, tiles, tiles)
    if dtype == torch.float32:
        forward = TileConfig(block_m=64, block_n=64, block_k=32, block_h=32, num_warps=8, num_stages=2)
        return FusedConfig(
            forward=forward,
            grad_hidden=TileConfig(block_m=32, block_n=64, block_k=32, block_h=32, num_warps=4, num_stages=2),
            grad_weight=TileConfig(block_m=64, block_n=32, block_k=32, block_h=32, num_warps=4, num_stages=2),
            influence=forward,
        )
    return FusedConfig(
        forward=TileConfig(block_m=128, block_n=128, block_k=64, block_h=64, num_warps=8, num_stages=3),
        grad_hidden=TileConfig(block_m=64, block_n=128, block_k=64, block_h=64, num_warps=8, num_stages=3),
        grad_weight=TileConfig(block_m=128, block_n=64, block_k=64, block_h=64, num_warps=8, num_stages=3),
        influence=TileConfig(block_m=128, block_n=64, block_k=64, block_h=64, num_warps=8, num_stages=3),
    )


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
