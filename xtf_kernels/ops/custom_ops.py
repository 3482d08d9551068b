"""The three ops as ``torch.library`` custom ops with fake (meta) implementations and autograd.

``torch.compile`` sees each op as one node with known output shapes, so there is no graph break inside
the loss; the host sync of :mod:`compaction` happens inside the op, invisible to the graph.

Gradient strategy:
- ``reduction`` "mean" / "sum": the upstream gradient is one scalar, so the forward forms d_hidden,
  d_weight (fp32) and d_bias for a unit upstream gradient in the same pass over the logits (3 GEMMs per
  chunk in all, as many as a materialised forward + backward) and the backward only scales them.
- ``reduction="none"`` and ``token_logprobs``: the upstream gradient is per token and must be folded
  into d_logits *before* the d_weight sum, so the backward recomputes the logits chunk by chunk
  (4 GEMMs per chunk) using the saved fp32 log-sum-exp to skip the max/sum pass.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .compaction import compact_rows
from .registry import get_backend
from .spec import HeadSpec
from .spec import RowGrads
from .spec import row_loss

_EMPTY_SHAPE = (0,)


def _empty(like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return like.new_empty(_EMPTY_SHAPE, dtype=dtype or like.dtype)


def _chunk(chunk_size: int) -> int | None:
    return chunk_size if chunk_size > 0 else None


def _scatter_grads(result, comp, hidden, weight, need_h, need_w, need_b):
    """Full-size (grad_hidden, grad_weight fp32, grad_bias fp32), empty tensors where not wanted."""
    vocab = weight.shape[0]
    f32 = dict(dtype=torch.float32, device=hidden.device)
    grad_hidden = _empty(hidden)
    if need_h:
        grad_hidden = comp.scatter(result.grad_hidden) if result is not None else torch.zeros_like(hidden)
    grad_weight = _empty(weight, torch.float32)
    if need_w:
        grad_weight = result.grad_weight if result is not None else torch.zeros(weight.shape, **f32)
    grad_bias = _empty(weight, torch.float32)
    if need_b:
        grad_bias = result.grad_bias if result is not None else torch.zeros(vocab, **f32)
    return grad_hidden, grad_weight, grad_bias


# --------------------------------------------------------------------------------------------------
# linear cross-entropy
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("xtf::linear_cross_entropy", mutates_args=())
def linear_cross_entropy_op(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    targets: Tensor,
    token_weights: Optional[Tensor],
    num_items: Optional[Tensor],
    ignore_index: int,
    reduction: str,
    softcap: float,
    label_smoothing: float,
    z_loss: float,
    need_grad_hidden: bool,
    need_grad_weight: bool,
    need_grad_bias: bool,
    backend: str,
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (loss, lse (N,) fp32, grad_hidden, grad_weight fp32, grad_bias fp32).

    hidden (N, H), weight (V, H), bias (V,) | None, targets (N,) int64, token_weights (N,) fp32 | None,
    num_items () fp32 | None. loss is () for "mean"/"sum", (N,) fp32 for "none". The three gradients
    are precomputed for a unit upstream gradient when reduction != "none" and the flag is set, else
    empty.
    """
    vocab = weight.shape[0]
    spec = HeadSpec(softcap=softcap, label_smoothing=label_smoothing, z_loss=z_loss)
    impl = get_backend(backend)
    comp = compact_rows(targets, token_weights, ignore_index, vocab, mover=impl)
    kept_weights = comp.gather(token_weights)
    precompute = reduction != "none" and (need_grad_hidden or need_grad_weight or need_grad_bias)
    f32 = dict(dtype=torch.float32, device=hidden.device)

    if reduction == "mean":
        if num_items is not None:
            denom = num_items.to(**f32)
        elif kept_weights is not None:
            denom = kept_weights.sum()
        else:
            denom = torch.tensor(float(comp.kept), **f32)
        # No kept token (or num_items == 0): loss and gradients are 0, never NaN.
        inv_denom = torch.where(denom > 0, 1.0 / denom, torch.zeros_like(denom))

    result = None
    if comp.kept:
        grads = None
        if precompute:
            g_loss = kept_weights if kept_weights is not None else torch.ones(comp.kept, **f32)
            if reduction == "mean":
                g_loss = g_loss * inv_denom
            grads = RowGrads(loss=g_loss)
        result = impl.head_pass(
            comp.gather(hidden),
            weight,
            bias,
            comp.gather(targets),
            spec,
            want_mean_logit=label_smoothing > 0,
            grads=grads,
            need_grad_hidden=precompute and need_grad_hidden,
            need_grad_weight=precompute and need_grad_weight,
            need_grad_bias=precompute and need_grad_bias,
            chunk_size=_chunk(chunk_size),
        )
        loss_rows = row_loss(result, spec)
        if kept_weights is not None:
            loss_rows = loss_rows * kept_weights
        lse = comp.scatter(result.lse)
    else:
        loss_rows = torch.zeros(0, **f32)
        lse = torch.zeros(comp.total, **f32)

    if reduction == "none":
        loss = comp.scatter(loss_rows) if comp.kept else torch.zeros(comp.total, **f32)
    elif reduction == "sum":
        loss = loss_rows.sum()
    else:
        loss = loss_rows.sum() * inv_denom
    grads_out = _scatter_grads(
        result, comp, hidden, weight,
        precompute and need_grad_hidden, precompute and need_grad_weight, precompute and need_grad_bias,
    )
    return (loss, lse, *grads_out)


@linear_cross_entropy_op.register_fake
def _(hidden, weight, bias, targets, token_weights, num_items, ignore_index, reduction, softcap,
      label_smoothing, z_loss, need_grad_hidden, need_grad_weight, need_grad_bias, backend, chunk_size):
    rows = hidden.shape[0]
    precompute = reduction != "none"
    loss = hidden.new_empty((rows,) if reduction == "none" else (), dtype=torch.float32)
    lse = hidden.new_empty((rows,), dtype=torch.float32)
    grad_hidden = torch.empty_like(hidden) if precompute and need_grad_hidden else _empty(hidden)
    grad_weight = (
        weight.new_empty(weight.shape, dtype=torch.float32) if precompute and need_grad_weight
        else _empty(weight, torch.float32)
    )
    grad_bias = (
        weight.new_empty((weight.shape[0],), dtype=torch.float32) if precompute and need_grad_bias
        else _empty(weight, torch.float32)
    )
    return loss, lse, grad_hidden, grad_weight, grad_bias


def _lce_setup_context(ctx, inputs, output):
    (hidden, weight, bias, targets, token_weights, _num_items, ignore_index, reduction, softcap,
     label_smoothing, z_loss, need_h, need_w, need_b, backend, chunk_size) = inputs
    _loss, lse, grad_hidden, grad_weight, grad_bias = output
    ctx.mark_non_differentiable(lse, grad_hidden, grad_weight, grad_bias)
    # Otherwise autograd zero-fills a gradient for each of those outputs: a (V, H) fill per backward.
    ctx.set_materialize_grads(False)
    ctx.precomputed = reduction != "none"
    ctx.needs = (need_h, need_w, need_b)
    ctx.dtypes = (hidden.dtype, weight.dtype)
    ctx.options = (ignore_index, softcap, label_smoothing, z_loss, backend, chunk_size)
    if ctx.precomputed:
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
    else:
        ctx.save_for_backward(hidden, weight, bias, targets, token_weights, lse)


def _scaled(precomputed: Tensor, grad_loss: Tensor, dtype: torch.dtype) -> Tensor:
    """precomputed * grad_loss, written straight in ``dtype``.

    For a 16-bit weight this skips an fp32 (V, H) temporary (2.1 GB at the backward's peak on the
    Llama-3 head); the saved buffer itself is left intact, so a retained graph can run backward again.
    """
    out = torch.empty(precomputed.shape, dtype=dtype, device=precomputed.device)
    return torch.mul(precomputed, grad_loss.to(torch.float32), out=out)


def _lce_backward(ctx, grad_loss, _grad_lse, _grad_h, _grad_w, _grad_b):
    need_h, need_w, need_b = ctx.needs
    hidden_dtype, weight_dtype = ctx.dtypes
    if grad_loss is None:
        return (None,) * 16
    if ctx.precomputed:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        d_hidden = _scaled(grad_hidden, grad_loss, hidden_dtype) if need_h else None
        d_weight = _scaled(grad_weight, grad_loss, weight_dtype) if need_w else None
        d_bias = _scaled(grad_bias, grad_loss, weight_dtype) if need_b else None
    else:
        hidden, weight, bias, targets, token_weights, lse = ctx.saved_tensors
        ignore_index, softcap, label_smoothing, z_loss, backend, chunk_size = ctx.options
        g_loss = grad_loss.to(torch.float32)
        if token_weights is not None:
            g_loss = g_loss * token_weights
        # Passing g_loss as the row weights compacts away every row whose upstream gradient is 0 too
        # (e.g. RHO-1's unselected tokens), so the recompute costs only the rows that get a gradient.
        d_hidden, d_weight, d_bias = head_backward_op(
            hidden, weight, bias, targets, g_loss, lse, None, g_loss, None, None, None,
            ignore_index, softcap, 1.0, label_smoothing, z_loss, need_h, need_w, need_b, backend, chunk_size,
        )
        d_hidden = d_hidden if need_h else None
        d_weight = d_weight.to(weight_dtype) if need_w else None
        d_bias = d_bias.to(weight_dtype) if need_b else None
    return (d_hidden, d_weight, d_bias) + (None,) * 13


linear_cross_entropy_op.register_autograd(_lce_backward, setup_context=_lce_setup_context)


# --------------------------------------------------------------------------------------------------
# recomputing backward shared by reduction="none" and token_logprobs
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("xtf::head_backward", mutates_args=())
def head_backward_op(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    targets: Tensor,
    row_weights: Optional[Tensor],
    lse: Tensor,
    entropy: Optional[Tensor],
    grad_loss: Optional[Tensor],
    grad_logprob: Optional[Tensor],
    grad_entropy: Optional[Tensor],
    grad_lse: Optional[Tensor],
    ignore_index: int,
    softcap: float,
    inv_temperature: float,
    label_smoothing: float,
    z_loss: float,
    need_grad_hidden: bool,
    need_grad_weight: bool,
    need_grad_bias: bool,
    backend: str,
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_hidden (N, H) in hidden's dtype, grad_weight (V, H) fp32, grad_bias (V,) fp32).

    Recomputes the logits of the kept rows chunk by chunk; every per-row tensor is (N,) fp32 and the
    row gradients follow the formula in :mod:`xtf_kernels.ops.spec`.
    """
    spec = HeadSpec(softcap, inv_temperature, label_smoothing, z_loss)
    impl = get_backend(backend)
    comp = compact_rows(targets, row_weights, ignore_index, weight.shape[0], validate=False, mover=impl)
    result = None
    if comp.kept:
        grads = RowGrads(*(comp.gather(g) for g in (grad_loss, grad_logprob, grad_entropy, grad_lse)))
        result = impl.head_pass(
            comp.gather(hidden), weight, bias, comp.gather(targets), spec,
            grads=grads, lse=comp.gather(lse), entropy=comp.gather(entropy),
            need_grad_hidden=need_grad_hidden, need_grad_weight=need_grad_weight,
            need_grad_bias=need_grad_bias, chunk_size=_chunk(chunk_size),
        )
    return _scatter_grads(result, comp, hidden, weight, need_grad_hidden, need_grad_weight, need_grad_bias)


@head_backward_op.register_fake
def _(hidden, weight, bias, targets, row_weights, lse, entropy, grad_loss, grad_logprob, grad_entropy,
      grad_lse, ignore_index, softcap, inv_temperature, label_smoothing, z_loss, need_grad_hidden,
      need_grad_weight, need_grad_bias, backend, chunk_size):
    grad_hidden = torch.empty_like(hidden) if need_grad_hidden else _empty(hidden)
    grad_weight = (
        weight.new_empty(weight.shape, dtype=torch.float32) if need_grad_weight else _empty(weight, torch.float32)
    )
    grad_bias = (
        weight.new_empty((weight.shape[0],), dtype=torch.float32) if need_grad_bias else _empty(weight, torch.float32)
    )
    return grad_hidden, grad_weight, grad_bias


# --------------------------------------------------------------------------------------------------
# per-token log-probabilities (+ entropy, log-sum-exp)
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("xtf::token_logprobs", mutates_args=())
def token_logprobs_op(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    targets: Tensor,
    ignore_index: int,
    softcap: float,
    inv_temperature: float,
    want_entropy: bool,
    backend: str,
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """(logprobs (N,), entropy (N,) or empty, lse (N,)), all fp32 and 0 at ignored rows."""
    spec = HeadSpec(softcap=softcap, inv_temperature=inv_temperature)
    impl = get_backend(backend)
    comp = compact_rows(targets, None, ignore_index, weight.shape[0], mover=impl)
    f32 = dict(dtype=torch.float32, device=hidden.device)
    if not comp.kept:
        zeros = torch.zeros(comp.total, **f32)
        return zeros, zeros.clone() if want_entropy else zeros.new_empty(0), zeros.clone()
    result = impl.head_pass(
        comp.gather(hidden), weight, bias, comp.gather(targets), spec,
        want_entropy=want_entropy, chunk_size=_chunk(chunk_size),
    )
    logprobs = comp.scatter(result.target_logit - result.lse)
    entropy = comp.scatter(result.entropy) if want_entropy else torch.empty(0, **f32)
    return logprobs, entropy, comp.scatter(result.lse)


@token_logprobs_op.register_fake
def _(hidden, weight, bias, targets, ignore_index, softcap, inv_temperature, want_entropy, backend, chunk_size):
    rows = hidden.shape[0]
    logprobs = hidden.new_empty((rows,), dtype=torch.float32)
    entropy = hidden.new_empty((rows,) if want_entropy else _EMPTY_SHAPE, dtype=torch.float32)
    return logprobs, entropy, hidden.new_empty((rows,), dtype=torch.float32)


def _logprobs_setup_context(ctx, inputs, output):
    hidden, weight, bias, targets, ignore_index, softcap, inv_temperature, want_entropy, backend, chunk_size = inputs
    _logprobs, entropy, lse = output
    ctx.set_materialize_grads(False)
    ctx.options = (ignore_index, softcap, inv_temperature, backend, chunk_size)
    ctx.needs = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
    ctx.want_entropy = want_entropy
    ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy if want_entropy else None)


def _logprobs_backward(ctx, grad_logprobs, grad_entropy, grad_lse):
    hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
    ignore_index, softcap, inv_temperature, backend, chunk_size = ctx.options
    need_h, need_w, need_b = ctx.needs
    if not ctx.want_entropy:
        grad_entropy = None
    grads = [None if g is None else g.to(torch.float32) for g in (grad_logprobs, grad_entropy, grad_lse)]
    if all(g is None for g in grads) or not (need_h or need_w or need_b):
        return (None,) * 10
    d_hidden, d_weight, d_bias = head_backward_op(
        hidden, weight, bias, targets, None, lse, entropy, None, *grads,
        ignore_index, softcap, inv_temperature, 0.0, 0.0, need_h, need_w, need_b, backend, chunk_size,
    )
    return (
        d_hidden if need_h else None,
        d_weight.to(weight.dtype) if need_w else None,
        d_bias.to(bias.dtype) if need_b else None,
    ) + (None,) * 7


token_logprobs_op.register_autograd(_logprobs_backward, setup_context=_logprobs_setup_context)


# --------------------------------------------------------------------------------------------------
# influence delta (no gradient)
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("xtf::influence_delta", mutates_args=())
def influence_delta_op(
    base_hidden: Tensor,
    base_weight: Tensor,
    base_bias: Optional[Tensor],
    ref_hidden: Tensor,
    ref_weight: Tensor,
    ref_bias: Optional[Tensor],
    targets: Tensor,
    ignore_index: int,
    softcap: float,
    inv_temperature: float,
    backend: str,
    chunk_size: int,
) -> Tensor:
    """(N,) fp32 logp_ref - logp_base, 0 at ignored rows."""
    spec = HeadSpec(softcap=softcap, inv_temperature=inv_temperature)
    impl = get_backend(backend)
    comp = compact_rows(targets, None, ignore_index, base_weight.shape[0], mover=impl)
    if not comp.kept:
        return torch.zeros(comp.total, dtype=torch.float32, device=base_hidden.device)
    kept_targets = comp.gather(targets)
    base = (comp.gather(base_hidden), base_weight, base_bias)
    ref = (comp.gather(ref_hidden), ref_weight, ref_bias)
    if hasattr(impl, "influence_delta"):
        delta = impl.influence_delta(base, ref, kept_targets, spec, chunk_size=_chunk(chunk_size))
    else:
        logprob = {}
        for name, (h, w, b) in (("base", base), ("ref", ref)):
            result = impl.head_pass(h, w, b, kept_targets, spec, chunk_size=_chunk(chunk_size))
            logprob[name] = result.target_logit - result.lse
        delta = logprob["ref"] - logprob["base"]
    return comp.scatter(delta)


@influence_delta_op.register_fake
def _(base_hidden, base_weight, base_bias, ref_hidden, ref_weight, ref_bias, targets, ignore_index, softcap,
      inv_temperature, backend, chunk_size):
    return base_hidden.new_empty((base_hidden.shape[0],), dtype=torch.float32)
