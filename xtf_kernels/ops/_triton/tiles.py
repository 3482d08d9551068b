"""Tile-level ``@triton.jit`` helpers of the fused kernels: a logits tile from hidden and weight tiles, and
the gradient of the raw logits over such a tile.

64-bit addressing without 64-bit index tensors: a tile's first row / column is turned into a scalar
pointer with 64-bit arithmetic by the caller (N * H, V * H and N * V may all pass 2^31: V * H = 525M at
the Llama-3 head, N * V passes 2^31 from N = 16744 there), and offsets inside the tile stay int32
(at most block * stride, e.g. 128 * 4096). Full int64 index tensors would double the registers held by
the address tensors of every tile load.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .row_math import final_logits_and_slope
from .row_math import raw_logit_grad


@triton.jit
def logits_tile(
    h_base, w_base, BIAS, col0, lrows, row_mask, lcols, col_mask, hdim, stride_hm, stride_hk, stride_wv, stride_wk,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """(BLOCK_M, BLOCK_N) fp32 raw logits hidden[rows] @ weight[cols].T + bias[cols], fp32 accumulation.

    h_base / w_base: pointers to the tile's first hidden row / weight row; lrows / lcols: int32 aranges
    inside the tile; col0: the tile's first column (for the bias). Masked rows / columns read zeros (so
    the tile there is 0, or the bias): callers mask what they keep.
    """
    ks = tl.arange(0, BLOCK_K)
    h_ptrs = h_base + lrows[:, None] * stride_hm + ks[None, :] * stride_hk
    w_ptrs = w_base + lcols[None, :] * stride_wv + ks[:, None] * stride_wk  # (BLOCK_K, BLOCK_N): weight^T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, hdim, BLOCK_K):
        k_mask = k0 + ks < hdim
        h_tile = tl.load(h_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w_tile = tl.load(w_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        acc = tl.dot(h_tile, w_tile, acc, input_precision=DOT_PRECISION)
        h_ptrs += BLOCK_K * stride_hk
        w_ptrs += BLOCK_K * stride_wk
    if HAS_BIAS:
        acc += tl.load(BIAS + col0 + lcols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def grad_tile(
    raw, row_mask, cols, col_mask, targets, shift, scale, coef_a, coef_b, coef_c, coef_d, CLASS_WEIGHTS,
    tanh_scale, out_scale, slope_scale,
    HAS_SOFTCAP: tl.constexpr, HAS_G_ENTROPY: tl.constexpr, HAS_CLASS_WEIGHTS: tl.constexpr,
    HAS_NORMALIZER: tl.constexpr,
):
    """(BLOCK_M, BLOCK_N) fp32 gradient with respect to the raw logits ``raw``, 0 outside the masks.

    cols: (BLOCK_N,) global column indices; targets, shift, coef_*: (BLOCK_M,) per-row values (see
    ``row_math.grad_coefficients``); p = exp(z - shift) * scale, scale (BLOCK_M,) with HAS_NORMALIZER, else
    1; CLASS_WEIGHTS: (V,) fp32, read only with HAS_CLASS_WEIGHTS (C's column factor w_j); tanh_scale,
    out_scale, slope_scale: ``row_math.logit_transform``.
    """
    z, slope = final_logits_and_slope(raw, tanh_scale, out_scale, slope_scale, HAS_SOFTCAP)
    col_c = coef_c[:, None]
    if HAS_CLASS_WEIGHTS:
        col_c = col_c * tl.load(CLASS_WEIGHTS + cols, mask=col_mask, other=0.0)[None, :]
    if HAS_NORMALIZER:
        p_scale = scale[:, None]
    else:
        p_scale = 1.0
    grad = raw_logit_grad(
        z, slope, shift[:, None], p_scale, cols[None, :] == targets[:, None], coef_a[:, None], coef_b[:, None],
        col_c, coef_d[:, None], HAS_G_ENTROPY,
    )
    # Padding rows carry shift = 0, so exp(z - shift) may overflow there; `where` selects 0 whatever it held.
    return tl.where(row_mask[:, None] & col_mask[None, :], grad, 0.0)
