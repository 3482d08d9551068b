"""Plain value types shared by every backend: how logits are transformed and which row gradients flow.

The logits every op means are ``z = softcap(y) / temperature`` with ``y = logit_scale * (hidden @ weight.T +
bias)`` and ``softcap(y) = s * tanh(y / s)`` (Gemma-2 style; identity when ``s`` is 0). All per-row
statistics are fp32 (float64 for float64 inputs).

Row-gradient formula (the one formula every backend implements; see csrc/xtf_row_math.h for the
host/device copy). For a row with final logits z, p = softmax(z), target t, label smoothing eps, z-loss
coefficient c, class weights w (w_j = 1 for every j without class weights; S = sum_j w_j, which is V
then) and upstream per-row gradients of the four per-row outputs

    g_loss    of  loss    = (1 - eps) w_t (lse - z_t) + (eps / V) sum_j w_j (lse - z_j) + c lse^2
    g_logprob of  logprob = z_t - lse
    g_entropy of  entropy = lse - sum_j p_j z_j
    g_lse     of  lse

(the loss is ``F.cross_entropy(z, t, weight=w, label_smoothing=eps, reduction="none")`` plus the z-loss,
which is not class-weighted) the gradient with respect to z is

    dz_j = p_j (A + D z_j) + B [j == t] + C_j
    A = g_lse + g_loss ((1 - eps) w_t + eps S / V + 2 c lse) - g_logprob + g_entropy (lse - entropy)
    D = -g_entropy
    B = g_logprob - g_loss (1 - eps) w_t
    C_j = -g_loss eps w_j / V

and the chain to the raw GEMM output multiplies by ``logit_scale * (1 / T) * (1 - tanh^2)`` where
``tanh = z * T / s`` is recovered from the final logits, so no extra buffer is needed for it (the factor
is ``logit_scale / T`` without softcap). ``mean_logit``, when asked for, is ``(1 / V) sum_j w_j z_j``.
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
    logit_scale: a > 0 multiplies the raw logits before softcap (Cohere / Granite heads); last, so that
        positional construction of the first four fields keeps working.
    """

    softcap: float = 0.0
    inv_temperature: float = 1.0
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    logit_scale: float = 1.0


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


class HeadPassRequest(NamedTuple):
    """What one head pass over M compacted rows is asked to form: every backend's ``head_pass(hidden, weight,
    bias, targets, spec, **options)`` builds one from its keywords (an unknown keyword is a TypeError there)
    and hands it to the chunked driver or the fused path.

    want_entropy / want_mean_logit / want_argmax: also form those (M,) outputs (the mean logit is
        class-weighted with class weights; the argmax is int64).
    class_weights: (V,) fp32 (float64 for float64 inputs) ``F.cross_entropy`` class weights, or None.
    grads: upstream per-row gradients (M,) each, or None for a statistics-only pass.
    lse, entropy: (M,) from an earlier forward (a recomputing backward skips the max / sum pass).
    need_grad_hidden / need_grad_weight / need_grad_bias: which parameter gradients to form (with ``grads``).
    chunk_size: rows per chunk, or None for :mod:`xtf_kernels.ops.chunking`'s default.
    """

    want_entropy: bool = False
    want_mean_logit: bool = False
    want_argmax: bool = False
    class_weights: torch.Tensor | None = None
    grads: RowGrads | None = None
    lse: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    need_grad_hidden: bool = False
    need_grad_weight: bool = False
    need_grad_bias: bool = False
    chunk_size: int | None = None

    @property
    def wants_grad(self) -> bool:
        """Upstream gradients given and at least one parameter gradient asked for."""
        return self.grads is not None and (self.need_grad_hidden or self.need_grad_weight or self.need_grad_bias)

    def row_kernel_options(self) -> dict:
        """The row-kernel keywords of the newer options, only those in use, so that a row kernel written before
        them keeps working for every call that does not use them (see ``engine.RowKernel``)."""
        options = {}
        if self.want_argmax:
            options["want_argmax"] = True
        if self.class_weights is not None:
            options["class_weights"] = self.class_weights
        return options


class HeadPassResult(NamedTuple):
    """What one pass over the (compacted) rows returns.

    lse, target_logit: (M,) fp32, always.
    mean_logit: (M,) fp32 (1 / V) sum_j w_j z_j (w_j = 1 without class weights) when asked for, else None.
    entropy: (M,) fp32 when asked for, else None.
    grad_hidden: (M, H) in hidden's dtype when asked for, else None.
    grad_weight: (V, H) fp32 accumulator when asked for, else None.
    grad_bias: (V,) fp32 when asked for, else None.
    argmax: (M,) int64 index of the first maximal z_j (``torch.argmax``'s tie rule) when asked for, else
        None.

    "fp32" reads float64 for float64 inputs throughout.
    """

    lse: torch.Tensor
    target_logit: torch.Tensor
    mean_logit: torch.Tensor | None
    entropy: torch.Tensor | None
    grad_hidden: torch.Tensor | None
    grad_weight: torch.Tensor | None
    grad_bias: torch.Tensor | None
    argmax: torch.Tensor | None = None


def row_loss(
    result: HeadPassResult, spec: HeadSpec, vocab: int, target_weight: torch.Tensor | None = None,
    weight_sum: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Per-row cross-entropy with label smoothing and z-loss from the per-row statistics, (M,) fp32.

    target_weight: (M,) class weight w_t of each row's target, or None (all 1); weight_sum: S = sum_j w_j
    (V when None). ``result.mean_logit`` must be the class-weighted one when class weights are used.
    """
    lse, eps, c = result.lse, spec.label_smoothing, spec.z_loss
    loss = lse - result.target_logit
    if target_weight is not None:
        loss = loss * target_weight
    if eps:
        scale = 1.0 if weight_sum is None else weight_sum / vocab
        loss = (1.0 - eps) * loss + eps * (scale * lse - result.mean_logit)
    if c:
        loss = loss + c * lse * lse
    return loss
