"""Independent float64 references with materialised logits, for the tests and the benchmarks.

Written from the definitions (``F.cross_entropy`` with its ``weight=`` and ``label_smoothing=``,
``log_softmax``, ``torch.argmax``), sharing no code with the package. The causal shift is done the plain
way, by slicing (hidden[..., :-1, :] predicts targets[..., 1:]).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def reference_logits(hidden, weight, bias=None, softcap=None, temperature=1.0, logit_scale=1.0):
    """(..., V) float64 ``softcap(logit_scale * (hidden @ weight.T + bias)) / temperature``."""
    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    logits = logits * logit_scale
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return logits / temperature


def shift_inputs(hidden, targets, token_weights=None, offset: int = 1):
    """The causal-LM slice by ``offset`` n: hidden[..., :-n, :], targets[..., n:], token_weights[..., n:]."""
    n = offset
    return hidden[..., :-n, :], targets[..., n:], None if token_weights is None else token_weights[..., n:]


class ReferenceLoss(NamedTuple):
    """float64 loss (differentiable), z-loss term, token accuracy, predicted tokens (int64), the logits, and the
    (shifted) targets and kept-token mask they were computed for."""

    loss: torch.Tensor
    z_loss: torch.Tensor
    token_accuracy: torch.Tensor
    predicted_tokens: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    kept: torch.Tensor


def reference_linear_cross_entropy_outputs(
    hidden, weight, targets, *, bias=None, token_weights=None, class_weights=None, ignore_index=-100,
    reduction="mean", num_items_in_batch=None, softcap=None, logit_scale=1.0, label_smoothing=0.0, z_loss=0.0,
    shift=False,
) -> ReferenceLoss:
    """Every output of ``linear_cross_entropy`` in float64; differentiable with respect to float64 leaves."""
    if shift:  # True or an offset n
        hidden, targets, token_weights = shift_inputs(hidden, targets, token_weights, int(shift))
    logits = reference_logits(hidden, weight, bias, softcap, logit_scale=logit_scale)
    vocab = logits.shape[-1]
    keep = targets != ignore_index
    safe_targets = torch.where(keep, targets, torch.zeros_like(targets))
    cw = None if class_weights is None else class_weights.double()
    per_token = F.cross_entropy(
        logits.reshape(-1, vocab), safe_targets.reshape(-1), weight=cw, reduction="none",
        label_smoothing=label_smoothing,
    ).reshape(targets.shape)
    lse = torch.logsumexp(logits, -1)
    z_term = z_loss * lse**2
    per_token = per_token + z_term
    weights = keep.double()
    if token_weights is not None:
        weights = weights * token_weights.double()
    kept = weights > 0
    zero = torch.zeros_like(per_token)
    per_token = torch.where(kept, per_token * weights, zero)
    z_term = torch.where(kept, z_term * weights, zero).detach()
    predicted = torch.where(kept, logits.argmax(-1), torch.full_like(targets, ignore_index))
    correct = ((predicted == targets) & kept).double()
    # torch's weighted mean divides by the target classes' weights (times the token weights here).
    denom_weights = weights if cw is None else weights * cw[safe_targets]
    if reduction == "none":
        return ReferenceLoss(per_token, z_term, correct, predicted, logits, targets, kept)
    accuracy = correct.sum() / kept.sum() if kept.any() else torch.zeros((), dtype=torch.float64)
    if reduction == "sum":
        return ReferenceLoss(per_token.sum(), z_term.sum(), accuracy, predicted, logits, targets, kept)
    denom = denom_weights.sum() if num_items_in_batch is None else torch.as_tensor(float(num_items_in_batch))
    if denom > 0:
        return ReferenceLoss(per_token.sum() / denom, z_term.sum() / denom, accuracy, predicted, logits, targets, kept)
    return ReferenceLoss(per_token.sum() * 0.0, z_term.sum() * 0.0, accuracy, predicted, logits, targets, kept)


def reference_linear_cross_entropy(hidden, weight, targets, **options):
    """The loss alone (see :func:`reference_linear_cross_entropy_outputs`)."""
    return reference_linear_cross_entropy_outputs(hidden, weight, targets, **options).loss


def reference_token_logprobs(hidden, weight, targets, *, bias=None, temperature=1.0, softcap=None, ignore_index=-100,
                             logit_scale=1.0, shift=False):
    """(logprobs, entropy, lse), each float64 shaped like targets, 0 at ignored positions."""
    return reference_token_logprobs_outputs(hidden, weight, targets, bias=bias, temperature=temperature,
                                            softcap=softcap, ignore_index=ignore_index, logit_scale=logit_scale,
                                            shift=shift)[:3]


def reference_token_logprobs_outputs(hidden, weight, targets, *, bias=None, temperature=1.0, softcap=None,
                                     ignore_index=-100, logit_scale=1.0, shift=False):
    """(logprobs, entropy, lse, predicted_tokens, mean_logit): float64 (int64 for the argmax), shaped like
    the (shifted) targets, 0 (ignore_index for the argmax) at ignored positions."""
    if shift:  # True or an offset n
        hidden, targets, _ = shift_inputs(hidden, targets, offset=int(shift))
    logits = reference_logits(hidden, weight, bias, softcap, temperature, logit_scale)
    log_p = torch.log_softmax(logits, -1)
    keep = targets != ignore_index
    safe_targets = torch.where(keep, targets, torch.zeros_like(targets))
    logprobs = log_p.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    lse = torch.logsumexp(logits, -1)
    zero = torch.zeros_like(logprobs)
    predicted = torch.where(keep, logits.argmax(-1), torch.full_like(targets, ignore_index))
    mean_logit = torch.where(keep, logits.mean(-1), zero).detach()
    return (torch.where(keep, logprobs, zero), torch.where(keep, entropy, zero), torch.where(keep, lse, zero),
            predicted, mean_logit)
