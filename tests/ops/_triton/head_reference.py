"""Float64 references for the head-pass contract (materialised logits, autograd), and random problems.

Written from the definitions (``logsumexp``, ``log_softmax``); shares no code with the package.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Outputs(NamedTuple):
    """Per-row statistics (M,) and gradients (or None), all float64; argmax (M,) int64."""

    lse: torch.Tensor
    target_logit: torch.Tensor
    mean_logit: torch.Tensor
    entropy: torch.Tensor
    grad_hidden: torch.Tensor | None
    grad_weight: torch.Tensor | None
    grad_bias: torch.Tensor | None
    argmax: torch.Tensor | None = None


def final_logits(raw, spec):
    """float64 z = softcap(logit_scale * raw) / T from raw logits ``raw`` (the op contract's definition)."""
    y = raw * spec.logit_scale
    if spec.softcap:
        y = spec.softcap * torch.tanh(y / spec.softcap)
    return y * spec.inv_temperature


def row_statistics(z: torch.Tensor, targets: torch.Tensor, class_weights=None):
    """(lse, target_logit, mean_logit, entropy) of final logits z (M, V), float64; with class weights the
    mean logit is (1 / V) sum_j cw_j z_j."""
    lse = torch.logsumexp(z, -1)
    log_p = z - lse[:, None]
    entropy = -(log_p.exp() * log_p).sum(-1)
    mean = z.mean(-1) if class_weights is None else (z * class_weights.double()).mean(-1)
    return lse, z.gather(1, targets[:, None]).squeeze(1), mean, entropy


def objective(stats, grads, spec, z=None, targets=None, class_weights=None):
    """sum_i g_loss loss + g_logprob logprob + g_entropy entropy + g_lse lse (the fields that are given).

    With class weights the loss is torch's ``F.cross_entropy(z, t, weight=cw, label_smoothing=eps,
    reduction="none") + c lse^2`` (needs ``z`` and ``targets``), so the op contract is checked against
    torch's semantics, not restated.
    """
    lse, target_logit, mean_logit, entropy = stats
    eps, c = spec.label_smoothing, spec.z_loss
    if class_weights is None:
        loss = (1 - eps) * (lse - target_logit) + eps * (lse - mean_logit) + c * lse**2
    else:
        loss = F.cross_entropy(z, targets, weight=class_weights.double(), label_smoothing=eps, reduction="none")
        loss = loss + c * lse**2
    total = lse.new_zeros(())
    for g, value in zip(grads, (loss, target_logit - lse, entropy, lse)):
        if g is not None:
            total = total + (g.double() * value).sum()
    return total


def reference_head_pass(hidden, weight, bias, targets, spec, grads=None, class_weights=None) -> Outputs:
    """The head pass of ``spec`` in float64 from (M, H) hidden, (V, H) weight, (V,) bias | None."""
    leaves = [x.detach().double().requires_grad_() for x in (hidden, weight)]
    bias64 = None if bias is None else bias.detach().double().requires_grad_()
    raw = leaves[0] @ leaves[1].T
    if bias64 is not None:
        raw = raw + bias64
    z = final_logits(raw, spec)
    stats = row_statistics(z, targets, class_weights)
    grad_hidden = grad_weight = grad_bias = None
    if grads is not None:
        objective(stats, grads, spec, z, targets, class_weights).backward()
        grad_hidden, grad_weight = leaves[0].grad, leaves[1].grad
        grad_bias = None if bias64 is None else bias64.grad
    return Outputs(*(s.detach() for s in stats), grad_hidden, grad_weight, grad_bias, z.detach().argmax(-1))


def random_class_weights(vocab, seed=3):
    """(V,) fp32 positive per-class weights in [0.25, 2), a few exactly 0 (classes switched off)."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(vocab, generator=gen) * 1.75 + 0.25
    weights[::7] = 0.0
    return weights


def random_head(rows, hidden_size, vocab, dtype, *, bias=False, logit_std=2.0, seed=0):
    """hidden (M, H), weight (V, H) with logits of std ~ logit_std, bias (V,) | None, targets (M,) int64."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, hidden_size, generator=gen)
    weight = torch.randn(vocab, hidden_size, generator=gen) * (logit_std / hidden_size**0.5)
    bias_t = torch.randn(vocab, generator=gen) * 0.5 if bias else None
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    cast = lambda x: None if x is None else x.to(dtype)
    return cast(hidden), cast(weight), cast(bias_t), targets


def random_row_grads(rows, fields=("loss", "logprob", "entropy", "lse"), seed=1):
    """RowGrads-shaped tuple with random (M,) fp32 values in the named fields, None elsewhere."""
    from xtf_kernels.ops.spec import RowGrads

    gen = torch.Generator().manual_seed(seed)
    values = {name: torch.randn(rows, generator=gen) for name in fields}
    return RowGrads(**values)
