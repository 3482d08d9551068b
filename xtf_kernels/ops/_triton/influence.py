"""Influence delta logp_ref - logp_base of two heads over the same tokens, both models in one pass.

The two heads share V (their H may differ). Fused path: each program forms the base and the reference
logits tile for the same rows and vocabulary tile (two ``tl.dot`` loops, one per model) and merges both
online log-sum-exps and target logits together, so the vocabulary is walked once and no logits reach
memory (extra memory 6 x splits x M x 4 bytes). Chunked path: per chunk two GEMMs through torch fill two
fp32 logits buffers and one row kernel reads both rows and writes the delta.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..chunking import memory_budget_bytes
from ..chunking import resolve_chunk_size
from ..engine import _Fp32WeightBlocks
from ..engine import _logits_into
from ..spec import HeadSpec
from .config import TileConfig
from .config import dot_precision
from .config import fused_config
from .config import row_config
from .config import vocab_split
from .fused_forward import merge_statistics
from .row_math import final_logits
from .row_math import finite_or_zero
from .row_math import logit_transform
from .tiles import logits_tile

_FORWARD_WAVES = 2
_FORWARD_MAX_SPLITS = 16


@triton.jit
def _online_update(z, col_mask, cols, targets, run_max, run_sum, target_logit):
    z = tl.where(col_mask[None, :], z, float("-inf"))
    new_max = tl.maximum(run_max, tl.max(z, 1))
    shift = finite_or_zero(new_max)
    run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(z - shift[:, None]), 1)
    target_logit += tl.sum(tl.where(cols[None, :] == targets[:, None], z, 0.0), 1)
    return new_max, run_sum, target_logit


@triton.jit
def _influence_kernel(
    HB, WB, BB, HR, WR, BR, TARGETS, PARTS,
    rows_total, vocab, hdim_base, hdim_ref,
    stride_hbm, stride_hbk, stride_wbv, stride_wbk, stride_hrm, stride_hrk, stride_wrv, stride_wrk,
    stride_part, cols_per_split, tanh_scale, out_scale,
    HAS_BASE_BIAS: tl.constexpr, HAS_REF_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    BASE_PRECISION: tl.constexpr, REF_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    split = tl.program_id(1)
    row0 = tl.program_id(0) * BLOCK_M
    lrows = tl.arange(0, BLOCK_M)
    lcols = tl.arange(0, BLOCK_N)
    rows = row0 + lrows
    row_mask = rows < rows_total
    targets = tl.load(TARGETS + rows, mask=row_mask, other=-1).to(tl.int32)
    base_h = HB + tl.cast(row0, tl.int64) * stride_hbm
    ref_h = HR + tl.cast(row0, tl.int64) * stride_hrm
    col_start = split * cols_per_split
    col_stop = tl.minimum(col_start + cols_per_split, vocab)
    base_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    ref_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    base_sum = tl.zeros((BLOCK_M,), tl.float32)
    ref_sum = tl.zeros((BLOCK_M,), tl.float32)
    base_target = tl.zeros((BLOCK_M,), tl.float32)
    ref_target = tl.zeros((BLOCK_M,), tl.float32)
    for n0 in range(col_start, col_stop, BLOCK_N):
        cols = n0 + lcols
        col_mask = cols < col_stop
        raw = logits_tile(
            base_h, WB + tl.cast(n0, tl.int64) * stride_wbv, BB, n0, lrows, row_mask, lcols, col_mask, hdim_base,
            stride_hbm, stride_hbk, stride_wbv, stride_wbk, HAS_BASE_BIAS, BLOCK_M, BLOCK_N, BLOCK_K, BASE_PRECISION,
        )
        z = final_logits(raw, tanh_scale, out_scale, HAS_SOFTCAP)
        base_max, base_sum, base_target = _online_update(z, col_mask, cols, targets, base_max, base_sum, base_target)
        raw = logits_tile(
            ref_h, WR + tl.cast(n0, tl.int64) * stride_wrv, BR, n0, lrows, row_mask, lcols, col_mask, hdim_ref,
            stride_hrm, stride_hrk, stride_wrv, stride_wrk, HAS_REF_BIAS, BLOCK_M, BLOCK_N, BLOCK_K, REF_PRECISION,
        )
        z = final_logits(raw, tanh_scale, out_scale, HAS_SOFTCAP)
        ref_max, ref_sum, ref_target = _online_update(z, col_mask, cols, targets, ref_max, ref_sum, ref_target)
    out = PARTS + tl.cast(split, tl.int64) * rows_total + rows
    tl.store(out, base_max, mask=row_mask)
    tl.store(out + stride_part, base_sum, mask=row_mask)
    tl.store(out + 2 * stride_part, base_target, mask=row_mask)
    tl.store(out + 3 * stride_part, ref_max, mask=row_mask)
    tl.store(out + 4 * stride_part, ref_sum, mask=row_mask)
    tl.store(out + 5 * stride_part, ref_target, mask=row_mask)


def fused_influence_delta(base, ref, targets: torch.Tensor, spec: HeadSpec, config: TileConfig | None = None):
    """(M,) fp32 logp_ref - logp_base in one fused pass.

    Args:
        base, ref: (hidden (M, H_b), weight (V, H_b), bias (V,) | None) and the same with H_r; each pair in
            one of fp32 / fp16 / bf16 (the two pairs may differ), any strides; biases contiguous.
        targets: (M,) int64 contiguous in [0, V).
    """
    (base_hidden, base_weight, base_bias), (ref_hidden, ref_weight, ref_bias) = base, ref
    rows = base_hidden.shape[0]
    vocab = base_weight.shape[0]
    # fp32 operands need the smaller fp32 tiles even when the other model is 16-bit.
    dtype = torch.float32 if torch.float32 in (base_hidden.dtype, ref_hidden.dtype) else base_hidden.dtype
    config = config or fused_config(dtype).influence
    transform = logit_transform(spec)
    split = vocab_split(rows, vocab, config.block_m, config.block_n, base_hidden.device,
                        waves=_FORWARD_WAVES, max_splits=_FORWARD_MAX_SPLITS)
    parts = torch.empty((6, split.splits, rows), dtype=torch.float32, device=base_hidden.device)
    _influence_kernel[(triton.cdiv(rows, config.block_m), split.splits)](
        base_hidden, base_weight, base_bias if base_bias is not None else base_weight,
        ref_hidden, ref_weight, ref_bias if ref_bias is not None else ref_weight, targets, parts,
        rows, vocab, base_hidden.shape[1], ref_hidden.shape[1],
        base_hidden.stride(0), base_hidden.stride(1), base_weight.stride(0), base_weight.stride(1),
        ref_hidden.stride(0), ref_hidden.stride(1), ref_weight.stride(0), ref_weight.stride(1),
        parts.stride(0), split.cols_per_split, *transform[:2],
        HAS_BASE_BIAS=base_bias is not None, HAS_REF_BIAS=ref_bias is not None, HAS_SOFTCAP=transform.has_softcap,
        BASE_PRECISION=dot_precision(base_hidden.dtype), REF_PRECISION=dot_precision(ref_hidden.dtype),
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    base_stats = merge_statistics(parts[0], parts[1], None, None, parts[2], vocab)
    ref_stats = merge_statistics(parts[3], parts[4], None, None, parts[5], vocab)
    return (ref_stats.target_logit - ref_stats.lse) - (base_stats.target_logit - base_stats.lse)


@triton.jit
def _row_log_prob(z_row, target, vocab, tanh_scale, out_scale, HAS_SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr):
    """log softmax(z)[target] of one fp32 raw logits row (online max / sum-exp over blocks)."""
    cols = tl.arange(0, BLOCK_V)
    run_max = float("-inf")
    run_sum = 0.0
    for start in range(0, vocab, BLOCK_V):
        offs = start + cols
        mask = offs < vocab
        z = final_logits(tl.load(z_row + offs, mask=mask, other=0.0), tanh_scale, out_scale, HAS_SOFTCAP)
        z = tl.where(mask, z, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z, 0))
        shift = finite_or_zero(new_max)
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(z - shift), 0)
        run_max = new_max
    target_logit = final_logits(tl.load(z_row + target), tanh_scale, out_scale, HAS_SOFTCAP)
    return target_logit - run_max - tl.log(run_sum)


@triton.jit
def _delta_row_kernel(
    BASE_Z, REF_Z, z_stride, TARGETS, OUT, vocab, tanh_scale, out_scale,
    HAS_SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(TARGETS + row)
    base = _row_log_prob(BASE_Z + row * z_stride, target, vocab, tanh_scale, out_scale, HAS_SOFTCAP, BLOCK_V)
    ref = _row_log_prob(REF_Z + row * z_stride, target, vocab, tanh_scale, out_scale, HAS_SOFTCAP, BLOCK_V)
    tl.store(OUT + row, ref - base)


def chunked_influence_delta(base, ref, targets: torch.Tensor, spec: HeadSpec, chunk_size: int | None = None):
    """(M,) fp32 logp_ref - logp_base chunk by chunk: two GEMMs and one two-row kernel per chunk.

    Arguments as in :func:`fused_influence_delta`; ``chunk_size`` as in :mod:`xtf_kernels.ops.chunking`
    (two (C, V) fp32 buffers).
    """
    (base_hidden, base_weight, base_bias), (ref_hidden, ref_weight, ref_bias) = base, ref
    rows = base_hidden.shape[0]
    vocab = base_weight.shape[0]
    device = base_hidden.device
    chunk = resolve_chunk_size(chunk_size, rows=rows, vocab=vocab, device=device, half_precision=False,
                               extra_fp32_buffers=1)
    buffers = torch.empty((2, min(chunk, rows), vocab), dtype=torch.float32, device=device)
    delta = torch.empty(rows, dtype=torch.float32, device=device)
    config = row_config(vocab)
    transform = logit_transform(spec)
    # 16-bit weights on the CPU (the interpreter) go through fp32 blocks, as in the chunked head pass: the
    # CPU has no 16-bit GEMM with an fp32 output (see xtf_kernels/ops/engine.py).
    upcasts = [
        _Fp32WeightBlocks(weight, memory_budget_bytes(device)) if weight.dtype != torch.float32 and not weight.is_cuda
        else None
        for weight in (base_weight, ref_weight)
    ]
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        base_z = _logits_into(buffers[0, : stop - start], base_hidden[start:stop], base_weight, base_bias, upcasts[0])
        ref_z = _logits_into(buffers[1, : stop - start], ref_hidden[start:stop], ref_weight, ref_bias, upcasts[1])
        _delta_row_kernel[(stop - start,)](
            base_z, ref_z, vocab, targets[start:stop], delta[start:stop], vocab, *transform[:2],
            HAS_SOFTCAP=transform.has_softcap, BLOCK_V=config.block_v,
            num_warps=config.num_warps,
        )
    return delta
