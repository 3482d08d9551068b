"""The three ops as ``torch.library`` custom ops with fake (meta) implementations and autograd.

``torch.compile`` sees each op as one node with known output shapes, so there is no graph break inside
the loss; the host sync of :mod:`compaction` happens inside the op, invisible to the graph. With
``max_kept`` > 0 (the public ``max_kept_tokens``) the ops run the sync-free static mode of
:func:`~xtf_kernels.ops.compaction.static_rows` instead, forward and backward, so they can be captured in a
CUDA graph.

Gradient strategy:
- ``reduction`` "mean" / "sum": the upstream gradient is one scalar, so the forward forms d_hidden,
  d_weight (fp32) and d_bias for a unit upstream gradient in the same pass over the logits (3 GEMMs per
  chunk in all, as many as a materialised forward + backward) and the backward only scales them.
- ``reduction="none"`` and ``token_logprobs``: the upstream gradient is per token and must be folded
  into d_logits *before* the d_weight sum, so the backward recomputes the logits chunk by chunk
  (4 GEMMs per chunk) using the saved fp32 log-sum-exp to skip the max/sum pass.

Dtypes: per-token outputs, the log-sum-exp and the precomputed d_weight / d_bias are fp32 for 16/32-bit
inputs and float64 for float64 inputs (:func:`~xtf_kernels.ops.engine.accumulation_dtype`); the argmax is
int64. An output that was not asked for is an empty tensor (a custom op returns a fixed tuple).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .compaction import Compaction
from .compaction import compact_rows
from .compaction import static_rows
from .engine import accumulation_dtype
from .registry import get_backend
from .spec import HeadSpec
from .spec import RowGrads
from .spec import row_loss

_EMPTY_SHAPE = (0,)


def _empty(like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return like.new_empty(_EMPTY_SHAPE, dtype=dtype or like.dtype)


def _chunk(chunk_size: int) -> int | None:
    return chunk_size if chunk_size > 0 else None


def _rows(targets, row_weights, ignore_index, vocab, impl, max_kept, *, validate=True, class_weights=None):
    """The compacting mode (one host sync) when ``max_kept`` is 0, else the sync-free static mode."""
    if max_kept > 0:
        return static_rows(targets, row_weights, ignore_index, vocab, max_kept, validate=validate,
                           class_weights=class_weights)
    return compact_rows(targets, row_weights, ignore_index, vocab, validate=validate, mover=impl,
                        class_weights=class_weights)


def _poisoned_total(comp: Compaction, total: Tensor) -> Tensor:
    """A reduced output, NaN when any row is poisoned (static mode; unchanged otherwise)."""
    if comp.poison is None:
        return total
    return torch.where(comp.poison.any(), torch.full((), float("nan"), dtype=total.dtype, device=total.device),
                       total)


def _scatter_grads(result, comp, hidden, weight, need_h, need_w, need_b):
    """Full-size (grad_hidden, grad_weight, grad_bias), the last two in the accumulation dtype; empty tensors
    where not wanted."""
    vocab = weight.shape[0]
    acc_dtype = accumulation_dtype(hidden.dtype)
    acc = dict(dtype=acc_dtype, device=hidden.device)
    grad_hidden = _empty(hidden)
    if need_h:
        grad_hidden = comp.scatter(result.grad_hidden) if result is not None else torch.zeros_like(hidden)
    grad_weight = _empty(weight, acc_dtype)
    if need_w:
        grad_weight = result.grad_weight if result is not None else torch.zeros(weight.shape, **acc)
    grad_bias = _empty(weight, acc_dtype)
    if need_b:
        grad_bias = result.grad_bias if result is not None else torch.zeros(vocab, **acc)
    return grad_hidden, grad_weight, grad_bias


def _argmax_out(result, comp, want: bool, ignore_index: int, device) -> Tensor:
    """(N,) int64 argmax with ignore_index at dropped rows, or empty when not wanted."""
    if not want:
        return torch.empty(_EMPTY_SHAPE, dtype=torch.int64, device=device)
    if result is None:
        return torch.full((comp.total,), ignore_index, dtype=torch.int64, device=device)
    return comp.scatter(result.argmax, fill=ignore_index)


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
    class_weights: Optional[Tensor],
    num_items: Optional[Tensor],
    ignore_index: int,
    reduction: str,
    softcap: float,
    logit_scale: float,
    label_smoothing: float,
    z_loss: float,
    want_z_loss: bool,
    want_argmax: bool,
    need_grad_hidden: bool,
    need_grad_weight: bool,
    need_grad_bias: bool,
    backend: str,
    chunk_size: int,
    max_kept: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (loss, lse (N,), z_loss term, argmax (N,) int64, grad_hidden, grad_weight, grad_bias).

    hidden (N, H), weight (V, H), bias (V,) | None, targets (N,) int64, token_weights (N,) and class_weights
    (V,) in the accumulation dtype | None, num_items () fp32 | None. loss and the z-loss term (c * lse^2 *
    token weight, reduced like the loss; empty unless ``want_z_loss``) are () for "mean"/"sum", (N,) for
    "none". argmax has ignore_index at dropped rows (empty unless ``want_argmax``). The three gradients
    are precomputed for a unit upstream gradient when reduction != "none" and the flag is set, else
    empty. max_kept > 0: the sync-free static mode (see :func:`~xtf_kernels.ops.compaction.static_rows`;
    loss and z-loss term NaN at poisoned rows, or everywhere for "mean" / "sum" when any row is poisoned).
    """
    vocab = weight.shape[0]
    spec = HeadSpec(softcap=softcap, label_smoothing=label_smoothing, z_loss=z_loss, logit_scale=logit_scale)
    impl = get_backend(backend)
    comp = _rows(targets, token_weights, ignore_index, vocab, impl, max_kept, class_weights=class_weights)
    acc = dict(dtype=accumulation_dtype(hidden.dtype), device=hidden.device)
    kept_weights = comp.gather(token_weights)
    if kept_weights is None and comp.row_mask is not None:
        kept_weights = comp.row_mask.to(acc["dtype"])  # static mode: the masked slots weigh 0
    kept_targets = comp.gather(targets)
    target_class_weight = None if class_weights is None else class_weights[kept_targets]
    precompute = reduction != "none" and (need_grad_hidden or need_grad_weight or need_grad_bias)

    if reduction == "mean":
        # torch's F.cross_entropy(weight=) divides by the sum of the target classes' weights.
        row_denominators = kept_weights
        if target_class_weight is not None:
            row_denominators = target_class_weight if kept_weights is None else kept_weights * target_class_weight
        if num_items is not None:
            denom = num_items.to(**acc)
        elif row_denominators is not None:
            denom = row_denominators.sum()
        else:
            denom = torch.tensor(float(comp.kept), **acc)
        # No kept token (or num_items == 0): loss and gradients are 0, never NaN.
        inv_denom = torch.where(denom > 0, 1.0 / denom, torch.zeros_like(denom))

    result = None
    if comp.kept:
        grads = None
        if precompute:
            g_loss = kept_weights if kept_weights is not None else torch.ones(comp.kept, **acc)
            if reduction == "mean":
                g_loss = g_loss * inv_denom
            grads = RowGrads(loss=g_loss)
        result = impl.head_pass(
            comp.gather(hidden),
            weight,
            bias,
            kept_targets,
            spec,
            want_mean_logit=label_smoothing > 0,
            grads=grads,
            need_grad_hidden=precompute and need_grad_hidden,
            need_grad_weight=precompute and need_grad_weight,
            need_grad_bias=precompute and need_grad_bias,
            chunk_size=_chunk(chunk_size),
            want_argmax=want_argmax,
            class_weights=class_weights,
        )
        weight_sum = None if class_weights is None else class_weights.sum()
        loss_rows = row_loss(result, spec, vocab, target_class_weight, weight_sum)
        z_rows = z_loss * result.lse.square() if want_z_loss else None
        if kept_weights is not None:
            loss_rows = loss_rows * kept_weights
            z_rows = None if z_rows is None else z_rows * kept_weights
        if comp.row_mask is not None:
            # A masked slot's loss is finite except against a -inf bias at target 0 (inf * 0 = NaN): select.
            zero = torch.zeros((), **acc)
            loss_rows = torch.where(comp.row_mask, loss_rows, zero)
            z_rows = None if z_rows is None else torch.where(comp.row_mask, z_rows, zero)
        lse = comp.scatter(result.lse)
    else:
        loss_rows = torch.zeros(0, **acc)
        z_rows = torch.zeros(0, **acc) if want_z_loss else None
        lse = torch.zeros(comp.total, **acc)

    def reduce(rows: Tensor) -> Tensor:
        if reduction == "none":
            return comp.poisoned(comp.scatter(rows) if comp.kept else torch.zeros(comp.total, **acc))
        if reduction == "sum":
            return _poisoned_total(comp, rows.sum())
        return _poisoned_total(comp, rows.sum() * inv_denom)

    loss = reduce(loss_rows)
    z_term = reduce(z_rows) if want_z_loss else torch.empty(_EMPTY_SHAPE, **acc)
    argmax = _argmax_out(result, comp, want_argmax, ignore_index, hidden.device)
    grads_out = _scatter_grads(
        result, comp, hidden, weight,
        precompute and need_grad_hidden, precompute and need_grad_weight, precompute and need_grad_bias,
    )
    return (loss, lse, z_term, argmax, *grads_out)


@linear_cross_entropy_op.register_fake
def _(hidden, weight, bias, targets, token_weights, class_weights, num_items, ignore_index, reduction, softcap,
      logit_scale, label_smoothing, z_loss, want_z_loss, want_argmax, need_grad_hidden, need_grad_weight,
      need_grad_bias, backend, chunk_size, max_kept=0):
    rows = hidden.shape[0]
    acc_dtype = accumulation_dtype(hidden.dtype)
    precompute = reduction != "none"
    loss_shape = (rows,) if reduction == "none" else ()
    loss = hidden.new_empty(loss_shape, dtype=acc_dtype)
    lse = hidden.new_empty((rows,), dtype=acc_dtype)
    z_term = hidden.new_empty(loss_shape if want_z_loss else _EMPTY_SHAPE, dtype=acc_dtype)
    argmax = hidden.new_empty((rows,) if want_argmax else _EMPTY_SHAPE, dtype=torch.int64)
    grad_hidden = torch.empty_like(hidden) if precompute and need_grad_hidden else _empty(hidden)
    grad_weight = (
        weight.new_empty(weight.shape, dtype=acc_dtype) if precompute and need_grad_weight
        else _empty(weight, acc_dtype)
    )
    grad_bias = (
        weight.new_empty((weight.shape[0],), dtype=acc_dtype) if precompute and need_grad_bias
        else _empty(weight, acc_dtype)
    )
    return loss, lse, z_term, argmax, grad_hidden, grad_weight, grad_bias


def _lce_setup_context(ctx, inputs, output):
    (hidden, weight, bias, targets, token_weights, class_weights, _num_items, ignore_index, reduction, softcap,
     logit_scale, label_smoothing, z_loss, _want_z_loss, _want_argmax, need_h, need_w, need_b, backend,
     chunk_size, max_kept) = inputs
    _loss, lse, z_term, argmax, grad_hidden, grad_weight, grad_bias = output
    ctx.mark_non_differentiable(lse, z_term, argmax, grad_hidden, grad_weight, grad_bias)
    # Otherwise autograd zero-fills a gradient for each of those outputs: a (V, H) fill per backward.
    ctx.set_materialize_grads(False)
    ctx.precomputed = reduction != "none"
    ctx.needs = (need_h, need_w, need_b)
    ctx.dtypes = (hidden.dtype, weight.dtype)
    ctx.options = (ignore_index, softcap, logit_scale, label_smoothing, z_loss, backend, chunk_size, max_kept)
    if ctx.precomputed:
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
    else:
        if max_kept > 0 and token_weights is not None:
            # Static mode: a poisoned row (negative / non-finite weight) gets no gradient, as in the forward.
            usable = torch.isfinite(token_weights) & (token_weights >= 0)
            token_weights = torch.where(usable, token_weights, torch.zeros((), dtype=token_weights.dtype,
                                                                           device=token_weights.device))
        ctx.save_for_backward(hidden, weight, bias, targets, token_weights, class_weights, lse)


def _scaled(precomputed: Tensor, grad_loss: Tensor, dtype: torch.dtype) -> Tensor:
    """precomputed * grad_loss, written straight in ``dtype``.

    For a 16-bit weight this skips an fp32 (V, H) temporary (2.1 GB at the backward's peak on the
    Llama-3 head); the saved buffer itself is left intact, so a retained graph can run backward again.
    """
    out = torch.empty(precomputed.shape, dtype=dtype, device=precomputed.device)
    return torch.mul(precomputed, grad_loss.to(precomputed.dtype), out=out)


_LCE_INPUTS = 21


def _lce_backward(ctx, grad_loss, _grad_lse, _grad_z, _grad_argmax, _grad_h, _grad_w, _grad_b):
    need_h, need_w, need_b = ctx.needs
    hidden_dtype, weight_dtype = ctx.dtypes
    if grad_loss is None:
        return (None,) * _LCE_INPUTS
    if ctx.precomputed:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        d_hidden = _scaled(grad_hidden, grad_loss, hidden_dtype) if need_h else None
        d_weight = _scaled(grad_weight, grad_loss, weight_dtype) if need_w else None
        d_bias = _scaled(grad_bias, grad_loss, weight_dtype) if need_b else None
    else:
        hidden, weight, bias, targets, token_weights, class_weights, lse = ctx.saved_tensors
        ignore_index, softcap, logit_scale, label_smoothing, z_loss, backend, chunk_size, max_kept = ctx.options
        g_loss = grad_loss.to(lse.dtype)
        if token_weights is not None:
            g_loss = g_loss * token_weights
        # Passing g_loss as the row weights compacts away every row whose upstream gradient is 0 too
        # (e.g. RHO-1's unselected tokens), so the recompute costs only the rows that get a gradient.
        d_hidden, d_weight, d_bias = head_backward_op(
            hidden, weight, bias, targets, g_loss, class_weights, lse, None, g_loss, None, None, None,
            ignore_index, softcap, logit_scale, 1.0, label_smoothing, z_loss, need_h, need_w, need_b, backend,
            chunk_size, max_kept,
        )
        d_hidden = d_hidden if need_h else None
        d_weight = d_weight.to(weight_dtype) if need_w else None
        d_bias = d_bias.to(weight_dtype) if need_b else None
    return (d_hidden, d_weight, d_bias) + (None,) * (_LCE_INPUTS - 3)


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
    class_weights: Optional[Tensor],
    lse: Tensor,
    entropy: Optional[Tensor],
    grad_loss: Optional[Tensor],
    grad_logprob: Optional[Tensor],
    grad_entropy: Optional[Tensor],
    grad_lse: Optional[Tensor],
    ignore_index: int,
    softcap: float,
    logit_scale: float,
    inv_temperature: float,
    label_smoothing: float,
    z_loss: float,
    need_grad_hidden: bool,
    need_grad_weight: bool,
    need_grad_bias: bool,
    backend: str,
    chunk_size: int,
    max_kept: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_hidden (N, H) in hidden's dtype, grad_weight (V, H), grad_bias (V,) in the accumulation dtype).

    Recomputes the logits of the kept rows chunk by chunk; every per-row tensor is (N,) in the accumulation
    dtype, class_weights (V,) or None, and the row gradients follow the formula in :mod:`xtf_kernels.ops.spec`.
    max_kept > 0: the sync-free static mode (the rows with a zero row weight are masked, not compacted).
    """
    spec = HeadSpec(softcap, inv_temperature, label_smoothing, z_loss, logit_scale)
    impl = get_backend(backend)
    comp = _rows(targets, row_weights, ignore_index, weight.shape[0], impl, max_kept, validate=False)
    result = None
    if comp.kept:
        grads = RowGrads(*(comp.gather(g) for g in (grad_loss, grad_logprob, grad_entropy, grad_lse)))
        result = impl.head_pass(
            comp.gather(hidden), weight, bias, comp.gather(targets), spec,
            grads=grads, lse=comp.gather(lse), entropy=comp.gather(entropy),
            need_grad_hidden=need_grad_hidden, need_grad_weight=need_grad_weight,
            need_grad_bias=need_grad_bias, chunk_size=_chunk(chunk_size), class_weights=class_weights,
        )
    return _scatter_grads(result, comp, hidden, weight, need_grad_hidden, need_grad_weight, need_grad_bias)


@head_backward_op.register_fake
def _(hidden, weight, bias, targets, row_weights, class_weights, lse, entropy, grad_loss, grad_logprob,
      grad_entropy, grad_lse, ignore_index, softcap, logit_scale, inv_temperature, label_smoothing, z_loss,
      need_grad_hidden, need_grad_weight, need_grad_bias, backend, chunk_size, max_kept=0):
    acc_dtype = accumulation_dtype(hidden.dtype)
    grad_hidden = torch.empty_like(hidden) if need_grad_hidden else _empty(hidden)
    grad_weight = weight.new_empty(weight.shape, dtype=acc_dtype) if need_grad_weight else _empty(weight, acc_dtype)
    grad_bias = (
        weight.new_empty((weight.shape[0],), dtype=acc_dtype) if need_grad_bias else _empty(weight, acc_dtype)
    )
    return grad_hidden, grad_weight, grad_bias


# --------------------------------------------------------------------------------------------------
# per-token log-probabilities (+ entropy, log-sum-exp, argmax, mean logit)
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("xtf::token_logprobs", mutates_args=())
def token_logprobs_op(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    targets: Tensor,
    ignore_index: int,
    softcap: float,
    logit_scale: float,
    inv_temperature: float,
    want_entropy: bool,
    want_argmax: bool,
    want_mean_logit: bool,
    backend: str,
    chunk_size: int,
    max_kept: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(logprobs (N,), entropy (N,), lse (N,), argmax (N,) int64, mean_logit (N,)).

    Float outputs are in the accumulation dtype and 0 at ignored rows; argmax is ignore_index there.
    entropy / argmax / mean_logit are empty unless asked for. max_kept > 0: the sync-free static mode
    (float outputs NaN at a target outside [0, V), see :func:`~xtf_kernels.ops.compaction.static_rows`).
    """
    spec = HeadSpec(softcap=softcap, inv_temperature=inv_temperature, logit_scale=logit_scale)
    impl = get_backend(backend)
    comp = _rows(targets, None, ignore_index, weight.shape[0], impl, max_kept)
    acc = dict(dtype=accumulation_dtype(hidden.dtype), device=hidden.device)
    if not comp.kept:
        zeros = torch.zeros(comp.total, **acc)
        return (
            zeros, zeros.clone() if want_entropy else zeros.new_empty(0), zeros.clone(),
            _argmax_out(None, comp, want_argmax, ignore_index, hidden.device),
            zeros.clone() if want_mean_logit else zeros.new_empty(0),
        )
    result = impl.head_pass(
        comp.gather(hidden), weight, bias, comp.gather(targets), spec,
        want_entropy=want_entropy, want_mean_logit=want_mean_logit, want_argmax=want_argmax,
        chunk_size=_chunk(chunk_size),
    )
    def per_row(values: Tensor) -> Tensor:
        return comp.poisoned(comp.scatter(values))

    logprobs = per_row(result.target_logit - result.lse)
    entropy = per_row(result.entropy) if want_entropy else torch.empty(0, **acc)
    mean_logit = per_row(result.mean_logit) if want_mean_logit else torch.empty(0, **acc)
    argmax = _argmax_out(result, comp, want_argmax, ignore_index, hidden.device)
    return logprobs, entropy, comp.scatter(result.lse), argmax, mean_logit


@token_logprobs_op.register_fake
def _(hidden, weight, bias, targets, ignore_index, softcap, logit_scale, inv_temperature, want_entropy,
      want_argmax, want_mean_logit, backend, chunk_size, max_kept=0):
    rows = hidden.shape[0]
    acc_dtype = accumulation_dtype(hidden.dtype)
    logprobs = hidden.new_empty((rows,), dtype=acc_dtype)
    entropy = hidden.new_empty((rows,) if want_entropy else _EMPTY_SHAPE, dtype=acc_dtype)
    argmax = hidden.new_empty((rows,) if want_argmax else _EMPTY_SHAPE, dtype=torch.int64)
    mean_logit = hidden.new_empty((rows,) if want_mean_logit else _EMPTY_SHAPE, dtype=acc_dtype)
    return logprobs, entropy, hidden.new_empty((rows,), dtype=acc_dtype), argmax, mean_logit


_LOGPROBS_INPUTS = 14


def _logprobs_setup_context(ctx, inputs, output):
    (hidden, weight, bias, targets, ignore_index, softcap, logit_scale, inv_temperature, want_entropy,
     _want_argmax, _want_mean_logit, backend, chunk_size, max_kept) = inputs
    _logprobs, entropy, lse, argmax, mean_logit = output
    ctx.mark_non_differentiable(argmax, mean_logit)
    ctx.set_materialize_grads(False)
    ctx.options = (ignore_index, softcap, logit_scale, inv_temperature, backend, chunk_size, max_kept)
    ctx.needs = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
    ctx.want_entropy = want_entropy
    ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy if want_entropy else None)


def _logprobs_backward(ctx, grad_logprobs, grad_entropy, grad_lse, _grad_argmax, _grad_mean_logit):
    hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
    ignore_index, softcap, logit_scale, inv_temperature, backend, chunk_size, max_kept = ctx.options
    need_h, need_w, need_b = ctx.needs
    if not ctx.want_entropy:
        grad_entropy = None
    grads = [None if g is None else g.to(lse.dtype) for g in (grad_logprobs, grad_entropy, grad_lse)]
    if all(g is None for g in grads) or not (need_h or need_w or need_b):
        return (None,) * _LOGPROBS_INPUTS
    d_hidden, d_weight, d_bias = head_backward_op(
        hidden, weight, bias, targets, None, None, lse, entropy, None, *grads,
        ignore_index, softcap, logit_scale, inv_temperature, 0.0, 0.0, need_h, need_w, need_b, backend,
        chunk_size, max_kept,
    )
    return (
        d_hidden if need_h else None,
        d_weight.to(weight.dtype) if need_w else None,
        d_bias.to(bias.dtype) if need_b else None,
    ) + (None,) * (_LOGPROBS_INPUTS - 3)


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
    """(N,) logp_ref - logp_base in the accumulation dtype, 0 at ignored rows."""
    spec = HeadSpec(softcap=softcap, inv_temperature=inv_temperature)
    impl = get_backend(backend)
    comp = compact_rows(targets, None, ignore_index, base_weight.shape[0], mover=impl)
    if not comp.kept:
        return torch.zeros(comp.total, dtype=accumulation_dtype(base_hidden.dtype), device=base_hidden.device)
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
    return base_hidden.new_empty((base_hidden.shape[0],), dtype=accumulation_dtype(base_hidden.dtype))
