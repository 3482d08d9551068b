"""Independent float64 references with materialised logits, for the tests and the benchmarks.

Written from the definitions (``F.cross_entropy``, ``log_softmax``), sharing no code with the package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_logits(hidden, weight, bias=None, softcap=None, temperature=1.0):
    """(..., V) float64 ``softcap(hidden @ weight.T + bias) / temperature``."""
    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return logits / temperature


def reference_linear_cross_entropy(
    hidden, weight, targets, *, bias=None, token_weights=None, ignore_index=-100, reduction="mean",
    num_items_in_batch=None, softcap=None, label_smoothing=0.0, z_loss=0.0,
):
    """Loss in float64; differentiable with respect to float64 leaves passed in."""
    logits = reference_logits(hidden, weight, bias, softcap)
    vocab = logits.shape[-1]
    keep = targets != ignore_index
    safe_targets = torch.where(keep, targets, torch.zeros_like(targets))
    per_token = F.cross_entropy(
        logits.reshape(-1, vocab), safe_targets.reshape(-1), reduction="none", label_smoothing=label_smoothing,
    ).reshape(targets.shape)
    if z_loss:
        per_token = per_token + z_loss * torch.logsumexp(logits, -1) ** 2
    weights = keep.double()
    if token_weights is not None:
        weights = weights * token_weights.double()
    per_token = torch.where(weights > 0, per_token * weights, torch.zeros_like(per_token))
    if reduction == "none":
        return per_token
    if reduction == "sum":
        return per_token.sum()
    denom = weights.sum() if num_items_in_batch is None else torch.as_tensor(float(num_items_in_batch))
    return per_token.sum() / denom if denom > 0 else per_token.sum() * 0.0


def reference_token_logprobs(hidden, weight, targets, *, bias=None, temperature=1.0, softcap=None, ignore_index=-100):
    """(logprobs, entropy, lse), each float64 shaped like targets, 0 at ignored positions."""
    logits = reference_logits(hidden, weight, bias, softcap, temperature)
    log_p = torch.log_softmax(logits, -1)
    keep = targets != ignore_index
    safe_targets = torch.where(keep, targets, torch.zeros_like(targets))
    logprobs = log_p.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    lse = torch.logsumexp(logits, -1)
    zero = torch.zeros_like(logprobs)
    return torch.where(keep, logprobs, zero), torch.where(keep, entropy, zero), torch.where(keep, lse, zero)
