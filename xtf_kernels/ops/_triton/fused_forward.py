"""Fused forward: per-row log-sum-exp, target logit, mean logit and entropy without the logits in memory.

Programs over (row block, vocabulary range): each walks its V range in tiles, forms the logits tile
``hidden @ weight.T + bias`` with ``tl.dot`` (fp32 accumulation), applies logit scale / softcap /
temperature, and merges an online max / sum-exp per row in fp32 together with the shifted sum
sum exp(z - max)(z - max) (entropy; see ``row_math.online_softmax_update``), sum w z (mean logit, w the
class weights or 1) and the target logit, and the first index of the maximum when asked. The per-range
partials, (splits, M) fp32 each, are merged by :func:`merge_statistics` in a fixed order, so results are
deterministic. Extra memory: 5 x splits x M x 4 bytes (+ splits x M x 8 for the argmax).
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
from .row_math import logit_transform
from .row_math import online_softmax_update
from .tiles import logits_tile

# A forward program is cheap to merge (O(M) per split), so aim for two waves of programs; 16 splits at
# most keeps the partials below 16 * 5 * M * 4 bytes = 320 bytes per row.
_FORWARD_WAVES = 2
_FORWARD_MAX_SPLITS = 16


@triton.jit
def _statistics_kernel(
    H, W, BIAS, TARGETS, CLASS_WEIGHTS, PART_MAX, PART_SUM, PART_SHIFTED, PART_TOTAL, PART_TARGET, PART_ARGMAX,
    rows_total, vocab, hdim, stride_hm, stride_hk, stride_wv, stride_wk, cols_per_split,
    tanh_scale, out_scale,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, ENTROPY_STAT: tl.constexpr, WANT_MEAN: tl.constexpr,
    WANT_ARGMAX: tl.constexpr, HAS_CLASS_WEIGHTS: tl.constexpr,
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
    run_shifted = tl.zeros((BLOCK_M,), tl.float32)
    run_total = tl.zeros((BLOCK_M,), tl.float32)
    target_logit = tl.zeros((BLOCK_M,), tl.float32)
    run_arg = tl.zeros((BLOCK_M,), tl.int32) + col_start  # the range's first column while all are -inf
    for n0 in range(col_start, col_stop, BLOCK_N):
        cols = n0 + lcols
        col_mask = cols < col_stop
        raw = logits_tile(
            h_base, W + tl.cast(n0, tl.int64) * stride_wv, BIAS, n0, lrows, row_mask, lcols, col_mask, hdim,
            stride_hm, stride_hk, stride_wv, stride_wk, HAS_BIAS, BLOCK_M, BLOCK_N, BLOCK_K, DOT_PRECISION,
        )
        # Padding columns become -inf: out of the max and the sums (one (BLOCK_M, BLOCK_N) tensor live, not two).
        z = tl.where(col_mask[None, :], final_logits(raw, tanh_scale, out_scale, HAS_SOFTCAP), float("-inf"))
        if WANT_ARGMAX:
            # strictly greater: an equal maximum in a later tile keeps the earlier index
            run_arg = tl.where(tl.max(z, 1) > run_max, n0 + tl.argmax(z, 1, tie_break_left=True), run_arg)
        if WANT_MEAN:
            if HAS_CLASS_WEIGHTS:
                w = tl.load(CLASS_WEIGHTS + cols, mask=col_mask, other=0.0)
                run_total += tl.sum(w[None, :] * tl.where(col_mask[None, :], z, 0.0), 1)  # w = 0 on padding
            else:
                run_total += tl.sum(tl.where(col_mask[None, :], z, 0.0), 1)
        target_logit += tl.sum(tl.where(cols[None, :] == targets[:, None], z, 0.0), 1)
        run_max, run_sum, run_shifted = online_softmax_update(z, run_max, run_sum, run_shifted, 1, ENTROPY_STAT)
    out = tl.cast(split, tl.int64) * rows_total + rows
    tl.store(PART_MAX + out, run_max, mask=row_mask)
    tl.store(PART_SUM + out, run_sum, mask=row_mask)
    tl.store(PART_TARGET + out, target_logit, mask=row_mask)
    if ENTROPY_STAT:
        tl.store(PART_SHIFTED + out, run_shifted, mask=row_mask)
    if WANT_MEAN:
        tl.store(PART_TOTAL + out, run_total, mask=row_mask)
    if WANT_ARGMAX:
        tl.store(PART_ARGMAX + out, run_arg.to(tl.int64), mask=row_mask)


@triton.jit
def _target_logit_kernel(
    H, W, BIAS, TARGETS, OUT, rows_total, hdim, stride_hm, stride_hk, stride_wv, stride_wk,
    tanh_scale, out_scale,
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
    tl.store(OUT + rows, final_logits(acc, tanh_scale, out_scale, HAS_SOFTCAP), mask=row_mask)


def fused_target_logits(hidden, weight, bias, targets, spec: HeadSpec, config: TileConfig | None = None):
    """(M,) fp32 final target logits z_t alone, O(M H) work: for a backward that was given the log-sum-exp.

    Shapes and dtypes as in :func:`fused_statistics`.
    """
    rows, hdim = hidden.shape
    config = config or fused_config(hidden.dtype).forward
    transform = logit_transform(spec)
    out = torch.empty(rows, dtype=torch.float32, device=hidden.device)
    _target_logit_kernel[(triton.cdiv(rows, config.block_m),)](
        hidden, weight, bias if bias is not None else weight, targets, out, rows, hdim,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), *transform[:2],
        HAS_BIAS=bias is not None, HAS_SOFTCAP=transform.has_softcap, BLOCK_M=config.block_m, BLOCK_K=config.block_k,
        num_warps=config.num_warps,
    )
    return out


class Statistics(NamedTuple):
    """(M,) fp32 per-row statistics; mean_logit / entropy / argmax (int64) are None when not asked for.

    shift, log_norm: the row maximum (0 where it is -inf) and log sum exp(z - shift), lse = shift + log_norm,
    for a backward in the same call (``fused_backward.fused_gradients``' normalizer).
    """

    lse: torch.Tensor
    target_logit: torch.Tensor
    mean_logit: torch.Tensor | None
    entropy: torch.Tensor | None
    argmax: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    log_norm: torch.Tensor | None = None


def merge_statistics(run_max, run_sum, run_shifted, run_total, target_logit, vocab: int,
                     run_argmax=None) -> Statistics:
    """Merge (splits, M) partials over the split axis (fixed order: deterministic).

    run_max, run_sum: the online max and sum exp(z - shift) of each range, shift = its max (0 while -inf);
    run_shifted: sum exp(z - shift)(z - shift) or None; run_total: sum w z or None; target_logit: z_t in the
    range holding t, 0 elsewhere (so the sum is exact); run_argmax: (splits, M) int64 first index of each
    range's maximum, or None. Ranges are contiguous and in column order, so the first range holding the row
    maximum holds its first index (torch.argmax's tie rule).
    """
    row_max = run_max.amax(0)
    row_shift = torch.where(row_max == float("-inf"), 0.0, row_max)
    rescale = torch.exp(run_max - row_shift)  # 0 for a range that saw no finite logit (max = -inf)
    sum_exp = (run_sum * rescale).sum(0)
    log_norm = torch.log(sum_exp)
    lse = row_max + log_norm
    entropy = None
    if run_shifted is not None:
        # Re-shift each range's sum to the row's shift: sum e^(z - M)(z - M) = f (shifted + (m - M) sum).
        range_shift = torch.where(run_max == float("-inf"), 0.0, run_max)
        shifted = ((run_shifted + (range_shift - row_shift) * run_sum) * rescale).sum(0)
        entropy = log_norm - shifted / sum_exp
    mean = None if run_total is None else run_total.sum(0) / vocab
    argmax = None
    if run_argmax is not None:
        first_range = (run_max == row_max).to(torch.int8).argmax(0, keepdim=True)
        argmax = run_argmax.gather(0, first_range).squeeze(0)
    return Statistics(lse, target_logit.sum(0), mean, entropy, argmax, row_shift, log_norm)


def fused_statistics(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    spec: HeadSpec,
    *,
    want_entropy: bool = False,
    want_mean_logit: bool = False,
    want_argmax: bool = False,
    class_weights: torch.Tensor | None = None,
    config: TileConfig | None = None,
) -> Statistics:
    """Per-row statistics of ``z = softcap(logit_scale * (hidden @ weight.T + bias)) / T`` in one fused pass.

    Args:
        hidden: (M, H) fp32 / fp16 / bf16, any strides; weight: (V, H) same dtype, any strides;
            bias: (V,) contiguous or None; targets: (M,) int64 contiguous, in [0, V).
        class_weights: (V,) fp32 contiguous or None: the mean logit becomes (1 / V) sum_j cw_j z_j.
        config: tile sizes (default: the ``forward`` tiles of :func:`~xtf_kernels.ops._triton.config.fused_config`).

    Returns:
        :class:`Statistics`, matching ``torch.logsumexp(z, -1)``, ``z.gather(targets)``, ``z.mean(-1)``,
        ``-(softmax(z) * log_softmax(z)).sum(-1)`` and ``z.argmax(-1)`` computed in fp32.
    """
    rows, hdim = hidden.shape
    vocab = weight.shape[0]
    if config is None:
        config = fused_config(hidden.dtype).forward
        if want_argmax and (want_mean_logit or want_entropy) and config.block_n > 64:
            # The argmax's running index beside a second row sum: compiled for sm_90, the 16-bit 128 x 128
            # tiles spill (8 bytes at 255 registers with mean logit, class weights, softcap and bias); 128 x 64
            # tiles do not. Only calls asking for the argmax pay the narrower tile.
            config = config._replace(block_n=64)
    transform = logit_transform(spec)
    split = vocab_split(rows, vocab, config.block_m, config.block_n, hidden.device,
                        waves=_FORWARD_WAVES, max_splits=_FORWARD_MAX_SPLITS)
    parts = torch.empty((5, split.splits, rows), dtype=torch.float32, device=hidden.device)
    part_argmax = torch.empty((split.splits, rows), dtype=torch.int64, device=hidden.device) if want_argmax else None
    grid = (triton.cdiv(rows, config.block_m), split.splits)
    _statistics_kernel[grid](
        hidden, weight, bias if bias is not None else weight, targets,
        class_weights if class_weights is not None else parts, *parts,
        part_argmax if part_argmax is not None else targets,
        rows, vocab, hdim, hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        split.cols_per_split, *transform[:2],
        HAS_BIAS=bias is not None, HAS_SOFTCAP=transform.has_softcap, ENTROPY_STAT=want_entropy,
        WANT_MEAN=want_mean_logit, WANT_ARGMAX=want_argmax,
        HAS_CLASS_WEIGHTS=want_mean_logit and class_weights is not None, DOT_PRECISION=dot_precision(hidden.dtype),
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    run_max, run_sum, run_shifted, run_total, target_logit = parts
    return merge_statistics(
        run_max, run_sum, run_shifted if want_entropy else None, run_total if want_mean_logit else None,
        target_logit, vocab, part_argmax,
    )
