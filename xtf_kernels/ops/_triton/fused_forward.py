"""Fused forward: per-row log-sum-exp, target logit, mean logit and entropy without the logits in memory.

Programs over (row block, vocabulary range): each walks its V range in tiles, forms the logits tile
``hidden @ weight.T + bias`` with ``tl.dot`` (fp32 accumulation), applies softcap / temperature, and merges
an online max / sum-exp per row in fp32 together with sum p z (entropy), sum z (mean logit) and the target
logit. The per-range partials, (splits, M) fp32 each, are merged by :func:`merge_statistics` in a fixed
order, so results are deterministic. Extra memory: 5 x splits x M x 4 bytes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..spec import HeadSpec
from .config import TileConfig
from .config import dot_precision
from .config import fused_config
from .config import vocab_split
from .row_math import final_logits
from .row_math import finite_or_zero
from .row_math import logit_where_probable
from .tiles import logits_tile

# A forward program is cheap to merge (O(M) per split), so aim for two waves of programs; 16 splits at
# most keeps the partials below 16 * 5 * M * 4 bytes = 320 bytes per row.
_FORWARD_WAVES = 2
_FORWARD_MAX_SPLITS = 16


@triton.jit
def _statistics_kernel(
    H, W, BIAS, TARGETS, PART_MAX, PART_SUM, PART_PZ, PART_TOTAL, PART_TARGET,
    rows_total, vocab, hdim, stride_hm, stride_hk, stride_wv, stride_wk, cols_per_split,
    softcap, inv_temperature,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, ENTROPY_STAT: tl.constexpr, WANT_MEAN: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    split = tl.program_id(1)
    row0 = tl.program_id(0) * BLOCK_M
    lrows = tl.arange(0, BLOCK_M)
    lcols = tl.arange(0, BLOCK_N)
    rows = row0 + lrows
    row_mask = rows < rows_total
    h_base = H + tl.cast(row0, tl.int64) * stride_hm
    targets = tl.load(TARGETS + rows, mask=row_mask, other=-1).to(tl.int32)
    col_start = split * cols_per_split
    col_stop = tl.minimum(col_start + cols_per_split, vocab)
    run_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_M,), tl.float32)
    run_pz = tl.zeros((BLOCK_M,), tl.float32)
    run_total = tl.zeros((BLOCK_M,), tl.float32)
    target_logit = tl.zeros((BLOCK_M,), tl.float32)
    for n0 in range(col_start, col_stop, BLOCK_N):
        cols = n0 + lcols
        col_mask = cols < col_stop
        raw = logits_tile(
            h_base, W + tl.cast(n0, tl.int64) * stride_wv, BIAS, n0, lrows, row_mask, lcols, col_mask, hdim,
            stride_hm, stride_hk, stride_wv, stride_wk, HAS_BIAS, BLOCK_M, BLOCK_N, BLOCK_K, DOT_PRECISION,
        )
        # Padding columns become -inf: out of the max and the sums (one (BLOCK_M, BLOCK_N) tensor live, not two).
        z = tl.where(col_mask[None, :], final_logits(raw, softcap, inv_temperature, HAS_SOFTCAP), float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z, 1))
        shift = finite_or_zero(new_max)
        rescale = tl.exp(run_max - shift)
        e = tl.exp(z - shift[:, None])
        run_sum = run_sum * rescale + tl.sum(e, 1)
        if ENTROPY_STAT:
            run_pz = run_pz * rescale + tl.sum(e * logit_where_probable(e, z), 1)
        if WANT_MEAN:
            run_total += tl.sum(tl.where(col_mask[None, :], z, 0.0), 1)
        target_logit += tl.sum(tl.where(cols[None, :] == targets[:, None], z, 0.0), 1)
        run_max = new_max
    out = tl.cast(split, tl.int64) * rows_total + rows
    tl.store(PART_MAX + out, run_max, mask=row_mask)
    tl.store(PART_SUM + out, run_sum, mask=row_mask)
    tl.store(PART_TARGET + out, target_logit, mask=row_mask)
    if ENTROPY_STAT:
        tl.store(PART_PZ + out, run_pz, mask=row_mask)
    if WANT_MEAN:
        tl.store(PART_TOTAL + out, run_total, mask=row_mask)


@triton.jit
def _target_logit_kernel(
    H, W, BIAS, TARGETS, OUT, rows_total, hdim, stride_hm, stride_hk, stride_wv, stride_wk,
    softcap, inv_temperature,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row0 = tl.program_id(0) * BLOCK_M
    lrows = tl.arange(0, BLOCK_M)
    rows = row0 + lrows
    row_mask = rows < rows_total
    targets = tl.load(TARGETS + rows, mask=row_mask, other=0)  # int64: targets * stride_wv may pass 2^31
    ks = tl.arange(0, BLOCK_K)
    h_ptrs = H + tl.cast(row0, tl.int64) * stride_hm + lrows[:, None] * stride_hm + ks[None, :] * stride_hk
    w_ptrs = W + targets[:, None] * stride_wv + ks[None, :] * stride_wk
    acc = tl.zeros((BLOCK_M,), tl.float32)
    for k0 in range(0, hdim, BLOCK_K):
        mask = row_mask[:, None] & (k0 + ks < hdim)[None, :]
        h = tl.load(h_ptrs, mask=mask, other=0.0)
        w = tl.load(w_ptrs, mask=mask, other=0.0)
        acc += tl.sum(h.to(tl.float32) * w.to(tl.float32), 1)
        h_ptrs += BLOCK_K * stride_hk
        w_ptrs += BLOCK_K * stride_wk
    if HAS_BIAS:
        acc += tl.load(BIAS + targets, mask=row_mask, other=0.0).to(tl.float32)
    tl.store(OUT + rows, final_logits(acc, softcap, inv_temperature, HAS_SOFTCAP), mask=row_mask)


def fused_target_logits(hidden, weight, bias, targets, spec: HeadSpec, config: TileConfig | None = None):
    """(M,) fp32 final target logits z_t alone, O(M H) work: for a backward that was given the log-sum-exp.

    Shapes and dtypes as in :func:`fused_statistics`.
    """
    rows, hdim = hidden.shape
    config = config or fused_config(hidden.dtype).forward
    out = torch.empty(rows, dtype=torch.float32, device=hidden.device)
    _target_logit_kernel[(triton.cdiv(rows, config.block_m),)](
        hidden, weight, bias if bias is not None else weight, targets, out, rows, hdim,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        float(spec.softcap), float(spec.inv_temperature),
        HAS_BIAS=bias is not None, HAS_SOFTCAP=spec.softcap > 0, BLOCK_M=config.block_m, BLOCK_K=config.block_k,
        num_warps=config.num_warps,
    )
    return out


class Statistics(NamedTuple):
    """(M,) fp32 per-row statistics; mean_logit / entropy are None when not asked for."""

    lse: torch.Tensor
    target_logit: torch.Tensor
    mean_logit: torch.Tensor | None
    entropy: torch.Tensor | None


def merge_statistics(run_max, run_sum, run_pz, run_total, target_logit, vocab: int) -> Statistics:
    """Merge (splits, M) fp32 partials over the split axis (fixed order: deterministic).

    run_max, run_sum: the online max and sum exp(z - max) of each range; run_pz: sum exp(z - max) z or None;
    run_total: sum z or None; target_logit: z_t in the range holding t, 0 elsewhere (so the sum is exact).
    """
    row_max = run_max.amax(0)
    rescale = torch.exp(run_max - row_max)  # 0 for a range that saw no column (max = -inf)
    sum_exp = (run_sum * rescale).sum(0)
    lse = row_max + torch.log(sum_exp)
    entropy = None if run_pz is None else lse - (run_pz * rescale).sum(0) / sum_exp
    mean = None if run_total is None else run_total.sum(0) / vocab
    return Statistics(lse, target_logit.sum(0), mean, entropy)


def fused_statistics(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    spec: HeadSpec,
    *,
    want_entropy: bool = False,
    want_mean_logit: bool = False,
    config: TileConfig | None = None,
) -> Statistics:
    """Per-row statistics of ``z = softcap(hidden @ weight.T + bias) / T`` in one fused pass.

    Args:
        hidden: (M, H) fp32 / fp16 / bf16, any strides; weight: (V, H) same dtype, any strides;
            bias: (V,) contiguous or None; targets: (M,) int64 contiguous, in [0, V).
        config: tile sizes (default: the ``forward`` tiles of :func:`~xtf_kernels.ops._triton.config.fused_config`).

    Returns:
        :class:`Statistics`, matching ``torch.logsumexp(z, -1)``, ``z.gather(targets)``, ``z.mean(-1)`` and
        ``-(softmax(z) * log_softmax(z)).sum(-1)`` computed in fp32.
    """
    rows, hdim = hidden.shape
    vocab = weight.shape[0]
    config = config or fused_config(hidden.dtype).forward
    split = vocab_split(rows, vocab, config.block_m, config.block_n, hidden.device,
                        waves=_FORWARD_WAVES, max_splits=_FORWARD_MAX_SPLITS)
    parts = torch.empty((5, split.splits, rows), dtype=torch.float32, device=hidden.device)
    grid = (triton.cdiv(rows, config.block_m), split.splits)
    _statistics_kernel[grid](
        hidden, weight, bias if bias is not None else weight, targets, *parts,
        rows, vocab, hdim, hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        split.cols_per_split, float(spec.softcap), float(spec.inv_temperature),
        HAS_BIAS=bias is not None, HAS_SOFTCAP=spec.softcap > 0, ENTROPY_STAT=want_entropy,
        WANT_MEAN=want_mean_logit, DOT_PRECISION=dot_precision(hidden.dtype),
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    run_max, run_sum, run_pz, run_total, target_logit = parts
    return merge_statistics(
        run_max, run_sum, run_pz if want_entropy else None, run_total if want_mean_logit else None,
        target_logit, vocab,
    )
