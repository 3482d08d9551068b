"""Public functional API: fused lm_head + loss / log-prob ops that never build the [tokens x vocab] logits.

Every op accepts any leading shape (``hidden`` is (..., H), ``targets`` is (...)) and returns fp32 per-token
values shaped like ``targets``. Rows whose target is ``ignore_index`` (and, for the loss, whose token
weight is 0) are compacted away before the first matmul: they cost no compute and get exactly zero
loss and gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import _validation as v
from .ops import custom_ops
from .ops.registry import resolve_backend


class TokenLogprobs(NamedTuple):
    """Per-token outputs of :func:`token_logprobs`, each fp32 shaped like ``targets`` (None if not asked)."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None
    lse: torch.Tensor | None


def _needs_grad(x: torch.Tensor | None) -> bool:
    return x is not None and x.requires_grad and torch.is_grad_enabled()


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch: int | float | torch.Tensor | None = None,
    softcap: float | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T + bias`` against ``targets`` without materialising the logits.

    Matches ``F.cross_entropy(softcap(hidden @ weight.T + bias).float(), targets, reduction="none",
    ignore_index=ignore_index, label_smoothing=label_smoothing) + z_loss * lse**2``, times
    ``token_weights``, then reduced; computed in fp32 whatever the input dtype.

    Args:
        hidden: (..., H) float32 / bfloat16 / float16; need not be contiguous.
        weight: (V, H), hidden's dtype (the lm_head / output-embedding weight).
        targets: (...) integer, in [0, V) or ``ignore_index``.
        bias: (V,) or None.
        token_weights: (...) float or bool, >= 0, multiplies each token's loss; 0 drops the token. No
            gradient flows to it.
        ignore_index: target value whose token contributes nothing.
        reduction: "mean" (sum_i w_i l_i / sum_i w_i, or / ``num_items_in_batch`` when given, the
            transformers gradient-accumulation convention), "sum", or "none" ((...) fp32, 0 at dropped
            tokens). With no kept token mean and sum are 0.0 and every gradient is 0.
        num_items_in_batch: global count of target tokens across gradient-accumulation micro-batches.
        softcap: s > 0 replaces logits y by s * tanh(y / s) before the softmax (Gemma-2).
        label_smoothing: eps in [0, 1], as in ``F.cross_entropy``.
        z_loss: c >= 0 adds c * lse^2 per kept token (PaLM).
        backend: "auto", "torch", "triton" or "cuda" (see :mod:`xtf_kernels.ops.registry`).
        chunk_size: tokens per chunk; default from a memory budget (:mod:`xtf_kernels.ops.chunking`).

    Returns:
        () fp32 for "mean" / "sum", (...) fp32 for "none".
    """
    v.check_head(hidden, weight, bias)
    v.check_targets(targets, hidden)
    v.check_token_weights(token_weights, targets)
    v.check_int("ignore_index", ignore_index)
    v.check_reduction(reduction)
    cap = v.check_softcap(softcap)
    label_smoothing = v.check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    z_loss = v.check_number("z_loss", z_loss, low=0.0)
    chunk = v.check_chunk_size(chunk_size)
    name = resolve_backend(backend, hidden.device)
    num_items = v.num_items_tensor(num_items_in_batch, hidden.device)

    hidden_2d = hidden.reshape(-1, hidden.shape[-1])
    targets_1d = targets.reshape(-1).long()
    weights_1d = None if token_weights is None else token_weights.detach().reshape(-1).to(torch.float32)
    loss, *_ = custom_ops.linear_cross_entropy_op(
        hidden_2d, weight, bias, targets_1d, weights_1d, num_items, ignore_index, reduction, cap,
        label_smoothing, z_loss, _needs_grad(hidden), _needs_grad(weight), _needs_grad(bias), name, chunk,
    )
    return loss.reshape(targets.shape) if reduction == "none" else loss


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    ignore_index: int = -100,
    return_entropy: bool = False,
    return_lse: bool = False,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor | TokenLogprobs:
    """log p(target) under ``z = softcap(hidden @ weight.T + bias) / temperature``, per token.

    Matches ``torch.log_softmax(z.float(), -1).gather(-1, targets)``; entropy is
    ``-(softmax(z) * log_softmax(z)).sum(-1)`` and lse ``torch.logsumexp(z, -1)``. Differentiable with
    respect to hidden, weight and bias through all three outputs (RL-style use); under ``torch.no_grad``
    it costs one matmul per chunk and nothing is saved.

    Args:
        hidden: (..., H) float32 / bfloat16 / float16; weight: (V, H); bias: (V,) or None.
        targets: (...) integer in [0, V) or ``ignore_index``.
        temperature: T > 0.
        return_entropy / return_lse: return a :class:`TokenLogprobs` named tuple.

    Returns:
        (...) fp32 log-probabilities, 0 at ignored positions; or a :class:`TokenLogprobs` whose entropy /
        lse are (...) fp32, 0 at ignored positions (None where not asked for).
    """
    v.check_head(hidden, weight, bias)
    v.check_targets(targets, hidden)
    v.check_int("ignore_index", ignore_index)
    cap = v.check_softcap(softcap)
    temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
    chunk = v.check_chunk_size(chunk_size)
    name = resolve_backend(backend, hidden.device)

    logprobs, entropy, lse = custom_ops.token_logprobs_op(
        hidden.reshape(-1, hidden.shape[-1]), weight, bias, targets.reshape(-1).long(), ignore_index, cap,
        1.0 / temperature, bool(return_entropy), name, chunk,
    )
    shape = targets.shape
    if not (return_entropy or return_lse):
        return logprobs.reshape(shape)
    return TokenLogprobs(
        logprobs.reshape(shape),
        entropy.reshape(shape) if return_entropy else None,
        lse.reshape(shape) if return_lse else None,
    )


def _unpack_model(name: str, model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if not isinstance(model, (tuple, list)) or len(model) not in (2, 3):
        raise TypeError(
            f"{name} must be a (hidden, weight) or (hidden, weight, bias) tuple, got {type(model).__name__}"
        )
    hidden, weight, *rest = model
    bias = rest[0] if rest else None
    v.check_head(hidden, weight, bias, prefix=f"{name} ")
    return hidden, weight, bias


def influence_delta(
    base,
    ref,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
    softcap: float | None = None,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Per-token ``log p_ref(target) - log p_base(target)`` (= ce_base - ce_ref), no gradient.

    Args:
        base, ref: (hidden (..., H_m), weight (V, H_m)) or (hidden, weight, bias (V,)) of two models over
            the same tokens; H may differ between them, V must match.
        targets: (...) integer, shared by both.

    Returns:
        (...) fp32, 0 at ignored positions. Neither model's logits are stored.
    """
    base_hidden, base_weight, base_bias = _unpack_model("base", base)
    ref_hidden, ref_weight, ref_bias = _unpack_model("ref", ref)
    if base_weight.shape[0] != ref_weight.shape[0]:
        raise ValueError(
            f"base weight has V={base_weight.shape[0]} but ref weight has V={ref_weight.shape[0]}; V must match"
        )
    if base_hidden.shape[:-1] != ref_hidden.shape[:-1]:
        raise ValueError(
            f"base hidden leading shape {tuple(base_hidden.shape[:-1])} != ref hidden leading shape "
            f"{tuple(ref_hidden.shape[:-1])}"
        )
    if base_hidden.device != ref_hidden.device:
        raise ValueError(f"base is on {base_hidden.device} but ref is on {ref_hidden.device}")
    v.check_targets(targets, base_hidden)
    v.check_int("ignore_index", ignore_index)
    cap = v.check_softcap(softcap)
    temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
    chunk = v.check_chunk_size(chunk_size)
    name = resolve_backend(backend, base_hidden.device)
    with torch.no_grad():
        delta = custom_ops.influence_delta_op(
            base_hidden.reshape(-1, base_hidden.shape[-1]), base_weight, base_bias,
            ref_hidden.reshape(-1, ref_hidden.shape[-1]), ref_weight, ref_bias,
            targets.reshape(-1).long(), ignore_index, cap, 1.0 / temperature, name, chunk,
        )
    return delta.reshape(targets.shape)
