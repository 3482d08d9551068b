"""Plain value types shared by every backend: how logits are transformed and which row gradients flow.

The logits every op means are ``z = softcap(hidden @ weight.T + bias) / temperature`` where
``softcap(y) = s * tanh(y / s)`` (Gemma-2 style; identity when ``s`` is 0). All per-row statistics are
fp32.

Row-gradient formula (the one formula every backend implements; see csrc/xtf_row_math.h for the
host/device copy). For a row with final logits z, p = softmax(z), target t, label smoothing eps, z-loss
coefficient c and upstream per-row gradients of the four per-row outputs

    g_loss    of  loss    = (1 - eps)(lse - z_t) + eps (lse - mean_j z_j) + c lse^2
    g_logprob of  logprob = z_t - lse
    g_entropy of  entropy = lse - sum_j p_j z_j
    g_lse     of  lse

the gradient with respect to z is

    dz_j = p_j (A + D z_j) + B [j == t] + C
    A = g_lse + g_loss (1 + 2 c lse) - g_logprob + g_entropy (lse - entropy)
    D = -g_entropy
    B = g_logprob - g_loss (1 - eps)
    C = -g_loss eps / V

and the chain through temperature and softcap multiplies by ``(1 / T) * (1 - tanh^2)`` where
``tanh = z * T / s`` is recovered from the final logits, so no extra buffer is needed for it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class HeadSpec(NamedTuple):
    """How the logits are formed and which loss terms apply (all Python floats, 0 meaning "off").

    softcap: s > 0 applies s * tanh(y / s); 0 disables.
    inv_temperature: 1 / T.
    label_smoothing: eps in [0, 1].
    z_loss: c >= 0, the coefficient of lse^2.
    """

    softcap: float = 0.0
    inv_temperature: float = 1.0
    label_smoothing: float = 0.0
    z_loss: float = 0.0


class RowGrads(NamedTuple):
    """Upstream gradients of the per-row outputs, each (M,) fp32 or None when that output has none."""

    loss: torch.Tensor | None = None
    logprob: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    lse: torch.Tensor | None = None

    def any(self) -> bool:
        return any(g is not None for g in self)

    def index(self, rows: torch.Tensor) -> RowGrads:
        """The same gradients restricted to ``rows`` (an index or a slice)."""
        return RowGrads(*(None if g is None else g[rows] for g in self))


class HeadPassResult(NamedTuple):
    """What one pass over the (compacted) rows returns.

    lse, target_logit: (M,) fp32, always.
    mean_logit: (M,) fp32 mean over the vocabulary of z when label smoothing needs it, else None.
    entropy: (M,) fp32 when asked for, else None.
    grad_hidden: (M, H) in hidden's dtype when asked for, else None.
    grad_weight: (V, H) fp32 accumulator when asked for, else None.
    grad_bias: (V,) fp32 when asked for, else None.
    """

    lse: torch.Tensor
    target_logit: torch.Tensor
    mean_logit: torch.Tensor | None
    entropy: torch.Tensor | None
    grad_hidden: torch.Tensor | None
    grad_weight: torch.Tensor | None
    grad_bias: torch.Tensor | None


def row_loss(result: HeadPassResult, spec: HeadSpec) -> torch.Tensor:
    """Per-row cross-entropy with label smoothing and z-loss from the per-row statistics, (M,) fp32."""
    lse, eps, c = result.lse, spec.label_smoothing, spec.z_loss
    loss = lse - result.target_logit
    if eps:
        loss = (1.0 - eps) * loss + eps * (lse - result.mean_logit)
    if c:
        loss = loss + c * lse * lse
    return loss
