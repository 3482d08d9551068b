"""Float64 references for the head-pass contract (materialised logits, autograd), and random problems.

Written from the definitions (``logsumexp``, ``log_softmax``); shares no code with the package.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from tests.reference import reference_logits


class Outputs(NamedTuple):
    """Per-row statistics (M,) and gradients (or None), all float64."""

    lse: torch.Tensor
    target_logit: torch.Tensor
    mean_logit: torch.Tensor
    entropy: torch.Tensor
    grad_hidden: torch.Tensor | None
    grad_weight: torch.Tensor | None
    grad_bias: torch.Tensor | None


def row_statistics(z: torch.Tensor, targets: torch.Tensor):
    """(lse, target_logit, mean_logit, entropy) of final logits z (M, V), float64."""
    lse = torch.logsumexp(z, -1)
    log_p = z - lse[:, None]
    entropy = -(log_p.exp() * log_p).sum(-1)
    return lse, z.gather(1, targets[:, None]).squeeze(1), z.mean(-1), entropy


def objective(stats, grads, spec):
    """sum_i g_loss loss + g_logprob logprob + g_entropy entropy + g_lse lse (the fields that are given)."""
    lse, target_logit, mean_logit, entropy = stats
    eps, c = spec.label_smoothing, spec.z_loss
    loss = (1 - eps) * (lse - target_logit) + eps * (lse - mean_logit) + c * lse**2
    total = lse.new_zeros(())
    for g, value in zip(grads, (loss, target_logit - lse, entropy, lse)):
        if g is not None:
            total = total + (g.double() * value).sum()
    return total


def reference_head_pass(hidden, weight, bias, targets, spec, grads=None) -> Outputs:
    """The head pass of ``spec`` in float64 from (M, H) hidden, (V, H) weight, (V,) bias | None."""
    leaves = [x.detach().double().requires_grad_() for x in (hidden, weight)]
    bias64 = None if bias is None else bias.detach().double().requires_grad_()
    z = reference_logits(*leaves, bias64, spec.softcap or None, 1.0 / spec.inv_temperature)
    stats = row_statistics(z, targets)
    grad_hidden = grad_weight = grad_bias = None
    if grads is not None:
        objective(stats, grads, spec).backward()
        grad_hidden, grad_weight = leaves[0].grad, leaves[1].grad
        grad_bias = None if bias64 is None else bias64.grad
    return Outputs(*(s.detach() for s in stats), grad_hidden, grad_weight, grad_bias)


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
