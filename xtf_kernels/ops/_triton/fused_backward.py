"""Fused backward: d_hidden, d_weight and d_bias from recomputed logits tiles, no atomics, deterministic.

Given the per-row log-sum-exp (and entropy when its gradient flows) and the upstream per-row gradients,
the gradient with respect to a raw logit is ``spec``'s formula evaluated on a recomputed tile; it is never
stored. Two kernels share that tile math:

- d_hidden: programs over (row block, vocabulary range) walk their V range; each gradient tile (rounded to
  the input dtype, as the chunked path rounds it before its matmuls) is multiplied by the weight tile and
  added into the program's own rows of an fp32 accumulator, H slice by H slice. Each program owns its
  rows x range slice exclusively, so the read-add-write needs no atomics; the ranges' partials are summed
  in a fixed order afterwards.
- d_weight (+ d_bias): programs over V tiles walk all row blocks, adding gradient^T @ hidden into their
  own rows of the fp32 d_weight (and the column sums into d_bias).

Ordering of the read-add-write: the accumulator load and store go through the same pointers, but the
compiler is free to give them different thread layouts (compiled for sm_90, the d_hidden load gets a
[1, 8] and the store a [1, 4] blocked layout), so the thread that reads an element at the next tile need
not be the one that wrote it. A ``tl.debug_barrier()`` (bar.sync: the CTA's global writes before it are
visible to the CTA after it) ends every tile's updates, so each read-add-write sees the previous tile's
store by construction, not through barriers the compiler happens to emit. One barrier per
(BLOCK_M x BLOCK_N) tile against 2 x BLOCK_M x BLOCK_N x H FLOP of recompute and product.

Cost: each kernel recomputes the logits (2 N H V FLOP) besides its product (2 N H V), so forward + both
gradients is 10 N H V FLOP against 6 N H V for the chunked path; a variant sharing one recompute between
the two products would need atomic adds (non-deterministic) and is not provided. Extra memory: the fp32
d_hidden accumulator, splits x M x H x 4 bytes, when the inputs are 16-bit or V is split (otherwise the
fp32 output itself accumulates); d_weight is the fp32 accumulator of the contract.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..spec import HeadSpec
from ..spec import RowGrads
from .config import FusedConfig
from .config import TileConfig
from .config import dot_precision
from .config import fused_config
from .config import vocab_split
from .row_math import grad_coefficients
from .row_math import logit_transform
from .tiles import grad_tile
from .tiles import logits_tile

# Each d_hidden split adds an M x H fp32 partial, so aim for one wave only and split V at most 8 ways.
_HIDDEN_WAVES = 1
_HIDDEN_MAX_SPLITS = 8


@triton.jit
def _row_block_coefficients(
    rows, row_mask, TARGETS, LSE, SHIFT, LOG_NORM, ENTROPY, G_LOSS, G_LOGPROB, G_ENTROPY, G_LSE, CLASS_WEIGHTS,
    CLASS_WEIGHT_SUM, z_loss, label_smoothing, vocab,
    HAS_G_LOSS: tl.constexpr, HAS_G_LOGPROB: tl.constexpr, HAS_G_ENTROPY: tl.constexpr, HAS_G_LSE: tl.constexpr,
    HAS_CLASS_WEIGHTS: tl.constexpr, HAS_NORMALIZER: tl.constexpr,
):
    """(targets int32, shift, scale, A, B, C, D), each (BLOCK_M,) (scale a scalar 1 without HAS_NORMALIZER), for
    the rows of one block: p = exp(z - shift) * scale (see ``row_math.raw_logit_grad``)."""
    targets = tl.load(TARGETS + rows, mask=row_mask, other=-1).to(tl.int32)
    lse = tl.load(LSE + rows, mask=row_mask, other=0.0)
    shift = lse
    scale = 1.0
    log_norm = 0.0
    if HAS_NORMALIZER:
        shift = tl.load(SHIFT + rows, mask=row_mask, other=0.0)
        log_norm = tl.load(LOG_NORM + rows, mask=row_mask, other=0.0)
        scale = tl.exp(-log_norm)
    entropy = lse
    if HAS_G_ENTROPY:
        entropy = tl.load(ENTROPY + rows, mask=row_mask, other=0.0)
    target_weight = 1.0
    weight_mean = 1.0
    if HAS_CLASS_WEIGHTS:
        target_weight = tl.load(CLASS_WEIGHTS + targets, mask=row_mask, other=0.0)
        weight_mean = tl.load(CLASS_WEIGHT_SUM) / vocab
    coef_a, coef_b, coef_c, coef_d = grad_coefficients(
        rows, row_mask, lse, log_norm, entropy, G_LOSS, G_LOGPROB, G_ENTROPY, G_LSE, z_loss, label_smoothing, vocab,
        target_weight, weight_mean, HAS_G_LOSS, HAS_G_LOGPROB, HAS_G_ENTROPY, HAS_G_LSE, HAS_CLASS_WEIGHTS,
    )
    return targets, shift, scale, coef_a, coef_b, coef_c, coef_d


@triton.jit
def _grad_hidden_kernel(
    H, W, BIAS, TARGETS, LSE, SHIFT, LOG_NORM, ENTROPY, G_LOSS, G_LOGPROB, G_ENTROPY, G_LSE, CLASS_WEIGHTS,
    CLASS_WEIGHT_SUM, DH,
    rows_total, vocab, hdim, stride_hm, stride_hk, stride_wv, stride_wk, stride_dh_split, stride_dh_m,
    cols_per_split, tanh_scale, out_scale, slope_scale, label_smoothing, z_loss,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_G_LOSS: tl.constexpr, HAS_G_LOGPROB: tl.constexpr, HAS_G_ENTROPY: tl.constexpr, HAS_G_LSE: tl.constexpr,
    HAS_CLASS_WEIGHTS: tl.constexpr, HAS_NORMALIZER: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
):
    split = tl.program_id(1)
    row0 = tl.program_id(0) * BLOCK_M
    lrows = tl.arange(0, BLOCK_M)
    lcols = tl.arange(0, BLOCK_N)
    hs = tl.arange(0, BLOCK_H)
    rows = row0 + lrows
    row_mask = rows < rows_total
    targets, shift, scale, coef_a, coef_b, coef_c, coef_d = _row_block_coefficients(
        rows, row_mask, TARGETS, LSE, SHIFT, LOG_NORM, ENTROPY, G_LOSS, G_LOGPROB, G_ENTROPY, G_LSE, CLASS_WEIGHTS,
        CLASS_WEIGHT_SUM, z_loss, label_smoothing, vocab, HAS_G_LOSS, HAS_G_LOGPROB, HAS_G_ENTROPY, HAS_G_LSE,
        HAS_CLASS_WEIGHTS, HAS_NORMALIZER,
    )
    h_base = H + tl.cast(row0, tl.int64) * stride_hm
    dh_base = DH + tl.cast(split, tl.int64) * stride_dh_split + tl.cast(row0, tl.int64) * stride_dh_m
    col_start = split * cols_per_split
    col_stop = tl.minimum(col_start + cols_per_split, vocab)
    for n0 in range(col_start, col_stop, BLOCK_N):
        cols = n0 + lcols
        col_mask = cols < col_stop
        w_base = W + tl.cast(n0, tl.int64) * stride_wv
        raw = logits_tile(
            h_base, w_base, BIAS, n0, lrows, row_mask, lcols, col_mask, hdim, stride_hm, stride_hk, stride_wv,
            stride_wk, HAS_BIAS, BLOCK_M, BLOCK_N, BLOCK_K, DOT_PRECISION,
        )
        grad = grad_tile(
            raw, row_mask, cols, col_mask, targets, shift, scale, coef_a, coef_b, coef_c, coef_d, CLASS_WEIGHTS,
            tanh_scale, out_scale, slope_scale, HAS_SOFTCAP, HAS_G_ENTROPY, HAS_CLASS_WEIGHTS, HAS_NORMALIZER,
        ).to(W.dtype.element_ty)
        accumulate = n0 > col_start  # the first tile of the range initialises the partial
        # (the scalar condition is broadcast to the tile explicitly below: Triton 3.9's interpreter rejects a
        # load mask that combines a tile with a bare scalar)
        for h0 in range(0, hdim, BLOCK_H):
            h_mask = h0 + hs < hdim
            w_tile = tl.load(
                w_base + lcols[:, None] * stride_wv + (h0 + hs)[None, :] * stride_wk,
                mask=col_mask[:, None] & h_mask[None, :], other=0.0,
            )
            part = tl.dot(grad, w_tile, input_precision=DOT_PRECISION)
            io_mask = row_mask[:, None] & h_mask[None, :]
            ptrs = dh_base + lrows[:, None] * stride_dh_m + (h0 + hs)[None, :]
            part += tl.load(ptrs, mask=io_mask & (tl.zeros_like(io_mask) | accumulate), other=0.0)
            tl.store(ptrs, part, mask=io_mask)
        # This tile's stores happen before the next tile's loads of the same elements (module docstring).
        tl.debug_barrier()


@triton.jit
def _grad_weight_kernel(
    H, W, BIAS, TARGETS, LSE, SHIFT, LOG_NORM, ENTROPY, G_LOSS, G_LOGPROB, G_ENTROPY, G_LSE, CLASS_WEIGHTS,
    CLASS_WEIGHT_SUM, DW, DB,
    rows_total, vocab, hdim, stride_hm, stride_hk, stride_wv, stride_wk, stride_dw_v,
    tanh_scale, out_scale, slope_scale, label_smoothing, z_loss,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_G_LOSS: tl.constexpr, HAS_G_LOGPROB: tl.constexpr, HAS_G_ENTROPY: tl.constexpr, HAS_G_LSE: tl.constexpr,
    HAS_CLASS_WEIGHTS: tl.constexpr, HAS_NORMALIZER: tl.constexpr, NEED_WEIGHT: tl.constexpr, NEED_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    col0 = tl.program_id(0) * BLOCK_N
    lrows = tl.arange(0, BLOCK_M)
    lcols = tl.arange(0, BLOCK_N)
    hs = tl.arange(0, BLOCK_H)
    cols = col0 + lcols
    col_mask = cols < vocab
    w_base = W + tl.cast(col0, tl.int64) * stride_wv
    dw_base = DW + tl.cast(col0, tl.int64) * stride_dw_v
    bias_grad = tl.zeros((BLOCK_N,), tl.float32)
    for m0 in range(0, rows_total, BLOCK_M):
        rows = m0 + lrows
        row_mask = rows < rows_total
        targets, shift, scale, coef_a, coef_b, coef_c, coef_d = _row_block_coefficients(
            rows, row_mask, TARGETS, LSE, SHIFT, LOG_NORM, ENTROPY, G_LOSS, G_LOGPROB, G_ENTROPY, G_LSE,
            CLASS_WEIGHTS, CLASS_WEIGHT_SUM, z_loss, label_smoothing, vocab, HAS_G_LOSS, HAS_G_LOGPROB,
            HAS_G_ENTROPY, HAS_G_LSE, HAS_CLASS_WEIGHTS, HAS_NORMALIZER,
        )
        h_base = H + tl.cast(m0, tl.int64) * stride_hm
        raw = logits_tile(
            h_base, w_base, BIAS, col0, lrows, row_mask, lcols, col_mask, hdim, stride_hm, stride_hk, stride_wv,
            stride_wk, HAS_BIAS, BLOCK_M, BLOCK_N, BLOCK_K, DOT_PRECISION,
        )
        grad = grad_tile(
            raw, row_mask, cols, col_mask, targets, shift, scale, coef_a, coef_b, coef_c, coef_d, CLASS_WEIGHTS,
            tanh_scale, out_scale, slope_scale, HAS_SOFTCAP, HAS_G_ENTROPY, HAS_CLASS_WEIGHTS, HAS_NORMALIZER,
        )
        if NEED_BIAS:
            bias_grad += tl.sum(grad, 0)
        if NEED_WEIGHT:
            grad_t = tl.trans(grad.to(H.dtype.element_ty))  # (BLOCK_N, BLOCK_M)
            accumulate = m0 > 0  # the first row block initialises the program's d_weight rows
            for h0 in range(0, hdim, BLOCK_H):
                h_mask = h0 + hs < hdim
                h_tile = tl.load(
                    h_base + lrows[:, None] * stride_hm + (h0 + hs)[None, :] * stride_hk,
                    mask=row_mask[:, None] & h_mask[None, :], other=0.0,
                )
                part = tl.dot(grad_t, h_tile, input_precision=DOT_PRECISION)
                io_mask = col_mask[:, None] & h_mask[None, :]
                ptrs = dw_base + lcols[:, None] * stride_dw_v + (h0 + hs)[None, :]
                part += tl.load(ptrs, mask=io_mask & (tl.zeros_like(io_mask) | accumulate), other=0.0)
                tl.store(ptrs, part, mask=io_mask)
            # As in the d_hidden kernel: this row block's stores before the next one's loads.
            tl.debug_barrier()
    if NEED_BIAS:
        tl.store(DB + cols, bias_grad, mask=col_mask)


def _launch(tiles: TileConfig) -> dict:
    return dict(
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, BLOCK_H=tiles.block_h,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )


class Gradients(NamedTuple):
    """grad_hidden (M, H) in hidden's dtype, grad_weight (V, H) fp32, grad_bias (V,) fp32; None if not asked."""

    hidden: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None


def fused_gradients(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    spec: HeadSpec,
    grads: RowGrads,
    lse: torch.Tensor,
    entropy: torch.Tensor | None,
    *,
    need_grad_hidden: bool,
    need_grad_weight: bool,
    need_grad_bias: bool,
    class_weights: torch.Tensor | None = None,
    normalizer: tuple[torch.Tensor, torch.Tensor] | None = None,
    config: FusedConfig | None = None,
) -> Gradients:
    """Gradients of sum_i (g_loss_i loss_i + g_logprob_i logprob_i + g_entropy_i entropy_i + g_lse_i lse_i).

    Args:
        hidden: (M, H), weight: (V, H) fp32 / fp16 / bf16, any strides; bias: (V,) contiguous or None.
        targets: (M,) int64 contiguous in [0, V); lse: (M,) fp32 of the final logits.
        grads: each field (M,) fp32 contiguous or None.
        entropy: (M,) fp32, required when ``grads.entropy`` is given.
        class_weights: (V,) fp32 contiguous per-class weights of the loss, or None (the op contract's
            class-weighted row gradient).
        normalizer: (shift, log_norm), each (M,) fp32: the rows' maximum (0 where -inf) and log sum
            exp(z - max) from a forward in the same call, or None. With them p = exp(z - max) / sum and the
            entropy term relative to max are exact at any logit size; from ``lse`` alone every p carries
            its fp32 rounding (~|lse| 6e-8 relative).
        config: tiles of the two kernels (default :func:`~xtf_kernels.ops._triton.config.fused_config`).

    Matches the chunked path: the logits gradient is rounded to the input dtype before the products, which
    accumulate in fp32.
    """
    rows, hdim = hidden.shape
    vocab = weight.shape[0]
    device = hidden.device
    config = config or fused_config(hidden.dtype)
    f32 = dict(dtype=torch.float32, device=device)
    if rows == 0:  # no row block would run, so nothing would initialise d_weight / d_bias
        return Gradients(
            torch.empty_like(hidden) if need_grad_hidden else None,
            torch.zeros((vocab, hdim), **f32) if need_grad_weight else None,
            torch.zeros(vocab, **f32) if need_grad_bias else None,
        )
    dummy = lse  # never read: the matching HAS_* / NEED_* flag is off
    weight_sum = None if class_weights is None else class_weights.sum(dtype=torch.float32).reshape(1)
    shift, log_norm = normalizer if normalizer is not None else (dummy, dummy)
    common_args = (
        hidden, weight, bias if bias is not None else dummy, targets, lse, shift, log_norm,
        entropy if grads.entropy is not None else dummy,
        *(g if g is not None else dummy for g in (grads.loss, grads.logprob, grads.entropy, grads.lse)),
        class_weights if class_weights is not None else dummy, weight_sum if weight_sum is not None else dummy,
    )
    transform = logit_transform(spec)
    flags = dict(
        HAS_BIAS=bias is not None, HAS_SOFTCAP=transform.has_softcap,
        HAS_G_LOSS=grads.loss is not None, HAS_G_LOGPROB=grads.logprob is not None,
        HAS_G_ENTROPY=grads.entropy is not None, HAS_G_LSE=grads.lse is not None,
        HAS_CLASS_WEIGHTS=class_weights is not None, HAS_NORMALIZER=normalizer is not None,
        DOT_PRECISION=dot_precision(hidden.dtype),
    )
    strides = (hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1))
    options = (*transform[:3], float(spec.label_smoothing), float(spec.z_loss))

    grad_hidden = None
    if need_grad_hidden:
        tiles = config.grad_hidden
        split = vocab_split(rows, vocab, tiles.block_m, tiles.block_n, device,
                            waves=_HIDDEN_WAVES, max_splits=_HIDDEN_MAX_SPLITS)
        in_place = split.splits == 1 and hidden.dtype == torch.float32
        partials = torch.empty((split.splits, rows, hdim), **f32)
        _grad_hidden_kernel[(triton.cdiv(rows, tiles.block_m), split.splits)](
            *common_args, partials, rows, vocab, hdim, *strides, partials.stride(0), partials.stride(1),
            split.cols_per_split, *options, **flags, **_launch(tiles),
        )
        grad_hidden = partials[0] if in_place else partials.sum(0).to(hidden.dtype)

    grad_weight = torch.empty((vocab, hdim), **f32) if need_grad_weight else None
    grad_bias = torch.empty(vocab, **f32) if need_grad_bias else None
    if need_grad_weight or need_grad_bias:
        tiles = config.grad_weight
        _grad_weight_kernel[(triton.cdiv(vocab, tiles.block_n),)](
            *common_args, grad_weight if need_grad_weight else dummy, grad_bias if need_grad_bias else dummy,
            rows, vocab, hdim, *strides, hdim, *options,
            NEED_WEIGHT=need_grad_weight, NEED_BIAS=need_grad_bias, **flags, **_launch(tiles),
        )
    return Gradients(grad_hidden, grad_weight, grad_bias)
