"""Triton kernels for the column sums of the softmax attention map, without the (L x L) map.

Two passes over Q K^T, each a tiled loop like a flash-attention forward without the P V product:

1. ``_row_lse_kernel``, one program per (query block, batch * q head): the log-sum-exp of every query
   row over the keys it sees, with an online max / sum over key blocks. Padding and out-of-range rows
   store +inf, so pass 2 gives them probability exactly 0.
2. ``_column_sum_kernel``, one program per (key block, batch * q head): for its keys, the sum over the
   query rows of exp(s - lse), looping over query blocks in order and accumulating in registers. Each
   column is owned by one program, so the result is deterministic (no atomics).

Both passes work in base 2 (scores scaled by scale * log2(e), then exp2) and accumulate in fp32; inputs
are fp32 / fp16 / bf16 (float64 is computed in fp32). fp32 inputs use full fp32 products (no TF32:
``input_precision="ieee"``), 16-bit inputs the tensor cores. With a causal mask each pass skips the key (query)
blocks that no row (column) of the program can see, about half the blocks.

Head dimension: d <= 256 (any d, padded in registers to a power of two >= 16, the smallest ``tl.dot``
operand). Grouped-query attention: q head h reads k head h // (Hq / Hk) (transformers' ``repeat_kv``
order).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .interpreter_compat import patch_scalar_index

# TRITON_INTERPRET=1 (CPU test tier): the loops below have runtime bounds, which the interpreter needs
# patched under NumPy >= 2.4 (see interpreter_compat).
if os.environ.get("TRITON_INTERPRET") == "1":
    patch_scalar_index()

MAX_HEAD_DIM = 256
_MAX_GRID_Y = 65535  # CUDA limit of the second grid dimension, which indexes (batch, q head)
_LOG2E = math.log2(math.e)


@triton.jit
def _row_lse_kernel(
    LSE, Q, K, KEY_VALID,  # data pointers: LSE (B * Hq, L) fp32 out; KEY_VALID (B, L) int8
    length, heads_q, group,  # shapes; group = Hq // Hk
    stride_qb, stride_qh, stride_ql, stride_qd,  # strides of Q (B, Hq, L, d)
    stride_kb, stride_kh, stride_kl, stride_kd,  # strides of K (B, Hk, L, d)
    qk_scale,  # scale * log2(e)
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)  # int64 offsets: q and k may hold more than 2^31 elements
    batch = pid_bh // heads_q
    head_q = pid_bh % heads_q
    head_k = head_q // group
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_in = rows < length
    q = tl.load(
        Q + batch * stride_qb + head_q * stride_qh + rows[:, None] * stride_ql + dims[None, :] * stride_qd,
        mask=row_in[:, None] & (dims[None, :] < HEAD_DIM), other=0.0,
    )
    k_base = K + batch * stride_kb + head_k * stride_kh
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    key_end = length
    if CAUSAL:  # keys past the block's last row are masked for every row of the block
        key_end = tl.minimum(length, (pid_m + 1) * BLOCK_M)
    for start in range(0, key_end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_in = cols < length
        k = tl.load(k_base + cols[:, None] * stride_kl + dims[None, :] * stride_kd,
                    mask=col_in[:, None] & (dims[None, :] < HEAD_DIM), other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        allowed = col_in[None, :]
        if CAUSAL:
            allowed = allowed & (cols[None, :] <= rows[:, None])
        if HAS_MASK:
            key_ok = tl.load(KEY_VALID + batch * length + cols, mask=col_in, other=0) != 0
            allowed = allowed & key_ok[None, :]
        scores = tl.where(allowed, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        # rows with no visible key yet keep max -inf; shift by 0 there so exp2 gives 0, not NaN
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        row_sum = row_sum * tl.exp2(row_max - shift) + tl.sum(tl.exp2(scores - shift[:, None]), 1)
        row_max = new_max
    live = row_in & (row_sum > 0)
    lse = row_max + tl.log2(tl.where(live, row_sum, 1.0))
    if HAS_MASK:
        live = live & (tl.load(KEY_VALID + batch * length + rows, mask=row_in, other=0) != 0)
    tl.store(LSE + pid_bh * length + rows, tl.where(live, lse, float("inf")), mask=row_in)


@triton.jit
def _column_sum_kernel(
    OUT, Q, K, LSE, KEY_VALID,  # data pointers: OUT (B * Hq, L) fp32; LSE (B * Hq, L) fp32 in base 2
    length, heads_q, group,  # shapes
    stride_qb, stride_qh, stride_ql, stride_qd,  # strides of Q
    stride_kb, stride_kh, stride_kl, stride_kd,  # strides of K
    qk_scale,  # scale * log2(e)
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    batch = pid_bh // heads_q
    head_q = pid_bh % heads_q
    head_k = head_q // group
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    col_in = cols < length
    k = tl.load(
        K + batch * stride_kb + head_k * stride_kh + cols[:, None] * stride_kl + dims[None, :] * stride_kd,
        mask=col_in[:, None] & (dims[None, :] < HEAD_DIM), other=0.0,
    )
    key_ok = col_in
    if HAS_MASK:
        key_ok = key_ok & (tl.load(KEY_VALID + batch * length + cols, mask=col_in, other=0) != 0)
    q_base = Q + batch * stride_qb + head_q * stride_qh
    totals = tl.zeros([BLOCK_N], tl.float32)
    row_start = 0
    if CAUSAL:  # rows before the block's first key see none of its keys
        row_start = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M
    for start in range(row_start, length, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_in = rows < length
        q = tl.load(q_base + rows[:, None] * stride_ql + dims[None, :] * stride_qd,
                    mask=row_in[:, None] & (dims[None, :] < HEAD_DIM), other=0.0)
        lse = tl.load(LSE + pid_bh * length + rows, mask=row_in, other=float("inf"))
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        allowed = key_ok[None, :]
        if CAUSAL:
            allowed = allowed & (cols[None, :] <= rows[:, None])
        # lse = +inf on padding / out-of-range rows makes their probabilities exactly 0
        probs = tl.exp2(tl.where(allowed, scores - lse[:, None], float("-inf")))
        totals += tl.sum(probs, 0)
    tl.store(OUT + pid_bh * length + cols, totals, mask=col_in)


def _blocks(head_dim: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK, num_warps). 64 x 64 tiles up to d = 128, 32 x 32 above (register pressure).

    The interpreter (CPU tensors) runs one program at a time, so it gets small 16 x 16 tiles.
    """
    block_d = max(16, triton.next_power_of_2(head_dim))
    if device.type != "cuda":
        return block_d, 16, 1
    return block_d, 64 if block_d <= 128 else 32, 4


def column_sums(
    q: torch.Tensor,
    k: torch.Tensor,
    key_valid: torch.Tensor | None,
    *,
    causal: bool,
    scale: float,
) -> torch.Tensor:
    """Same contract as :func:`xtf_kernels.ops._torch.attention_received.column_sums` (d <= 256).

    Args:
        q: (B, Hq, L, d), k: (B, Hk, L, d); fp32 / fp16 / bf16 (float64 is cast to fp32); any strides.
        key_valid: (B, L) bool or None.

    Returns:
        (B, Hq, L) fp32 column sums.
    """
    batch, heads_q, length, head_dim = q.shape
    if batch * heads_q > _MAX_GRID_Y:
        raise ValueError(
            f"backend='triton' launches one program row per (batch, q head): batch * heads_q = {batch * heads_q} "
            f"exceeds {_MAX_GRID_Y}; split the batch"
        )
    if q.dtype == torch.float64:
        q, k = q.float(), k.float()
    block_d, block, num_warps = _blocks(head_dim, q.device)
    lse = torch.empty(batch * heads_q, length, dtype=torch.float32, device=q.device)
    out = torch.empty(batch * heads_q, length, dtype=torch.float32, device=q.device)
    mask = key_valid.to(torch.int8).contiguous() if key_valid is not None else lse  # unread when no mask
    grid = (triton.cdiv(length, block), batch * heads_q)
    common = (length, heads_q, heads_q // k.shape[1], *q.stride(), *k.stride(), scale * _LOG2E)
    meta = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=block, BLOCK_N=block, CAUSAL=causal,
                HAS_MASK=key_valid is not None, num_warps=num_warps)
    _row_lse_kernel[grid](lse, q, k, mask, *common, **meta)
    _column_sum_kernel[grid](out, q, k, lse, mask, *common, **meta)
    return out.reshape(batch, heads_q, length)
