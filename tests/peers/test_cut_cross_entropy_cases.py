"""Cut Cross-Entropy's loss cases (tests/peers/cases.py) run against linear_cross_entropy, with CCE's own
tolerance rule: elementwise, our error against a high-precision ground truth (float64 here, CCE uses fp32)
may exceed the error of the plain materialised computation in the input dtype by at most CCE's error_tol.

``shift`` takes CCE's own values (0 and 2: position i predicts target i + 2). Differences on purpose: CCE
adds its z-loss outside the op (mean of lse^2 over kept tokens), which is our ``z_loss=1`` for "mean", and for
"sum" after CCE's division by the kept count; with "none" CCE's z-loss has no per-token form, so those cases
run without it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import xtf_kernels as xk
from tests.peers.cases import CCE_ERROR_TOL
from tests.peers.cases import cce_cases

IGNORE = -100


def _inputs(shape, dtype, bias, invalids, seed=0):
    tokens, vocab, dim = shape
    gen = torch.Generator().manual_seed(seed)
    e = torch.randn(tokens, dim, generator=gen) / dim**0.5
    c = torch.randn(vocab, dim, generator=gen)
    half = min(tokens, vocab) // 2
    c[:half] = e[:half]  # a token whose own row is in the head: a peaked softmax
    bias_t = torch.randn(vocab, generator=gen) * 0.02 if bias else None
    targets = torch.randint(0, vocab, (tokens,), generator=gen)
    if invalids:
        targets[torch.randperm(tokens, generator=gen)[: int(0.2 * tokens)]] = IGNORE
    leaves = [t.to(dtype) for t in (e.view(4, -1, dim), c, bias_t) if t is not None]
    return leaves, targets.view(4, -1)


def _materialised(leaves, targets, softcap, shift, reduction, z_loss, dtype):
    """CCE's reference computation with the logits materialised in ``dtype`` (float64: the ground truth),
    returning the scalar CCE back-propagates and its per-token (or reduced) loss."""
    e, c, *bias = (t.to(dtype) for t in leaves)
    if shift:
        e, targets = e[:, :-shift], targets[:, shift:]
    logits = e.flatten(0, -2) @ c.T
    if bias:
        logits = logits + bias[0]
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    flat = targets.flatten()
    loss = F.cross_entropy(logits.double() if dtype == torch.float64 else logits.float(), flat,
                           ignore_index=IGNORE, reduction=reduction)
    kept = flat != IGNORE
    if reduction == "sum":
        loss = loss / kept.sum()
    scalar = loss.mean()
    if z_loss:
        lse = torch.logsumexp(logits.double() if dtype == torch.float64 else logits.float(), -1)
        scalar = scalar + torch.where(kept, lse**2, 0.0).sum() / kept.sum()
    return scalar, loss


@pytest.mark.parametrize("index", range(len(cce_cases())))
def test_cce_loss_case(impl, index):
    shape, dtype, reduction, softcap, bias, shift, invalids, z_loss = cce_cases()[index]
    if dtype not in impl.dtypes:
        pytest.skip(f"{dtype} not tested on {impl}")
    if impl.interpret:
        # 30-50 s per case at full size under the Triton interpreter: every third case, at a quarter of each
        # dimension (the tolerance rule does not depend on the size).
        if index % 3:
            pytest.skip("every third CCE case under the Triton interpreter")
        tokens, vocab, dim = shape
        shape = (4 * (tokens // 16), vocab // 4, dim // 4)  # tokens stay a multiple of the 4 sequences
    leaves, targets = _inputs(shape, dtype, bias, invalids)
    mine = [t.detach().clone().to(impl.device).requires_grad_() for t in leaves]
    loss = xk.linear_cross_entropy(mine[0], mine[1], targets.to(impl.device), bias=mine[2] if bias else None,
                                   softcap=softcap, shift=shift, reduction=reduction, z_loss=1.0 if z_loss else 0.0,
                                   backend=impl.backend)
    if reduction == "sum":
        loss = loss / targets[:, shift:].ne(IGNORE).sum().to(impl.device)
    scalar = loss.mean()

    def run(dtype_):
        inputs = [t.detach().clone().to(dtype_).requires_grad_() for t in leaves]
        value, per_token = _materialised(inputs, targets, softcap, shift, reduction, z_loss, dtype_)
        return value, per_token, torch.autograd.grad(value, inputs)

    truth, truth_tokens, truth_grads = run(torch.float64)
    plain, plain_tokens, plain_grads = run(dtype)
    tol = CCE_ERROR_TOL[dtype]

    def check(name, ours, naive, exact):
        ours, naive, exact = (x.detach().double().cpu().flatten() for x in (ours, naive, exact))
        excess = ((ours - exact).abs() - ((naive - exact).abs() + tol)).max().item()
        assert excess <= 0, f"{name}: error exceeds the materialised {dtype} computation's by {excess:.3g} + tol"

    if reduction == "none":
        check("per-token loss", loss.flatten(), plain_tokens, truth_tokens)
    check("loss", scalar, plain, truth)
    for name, ours, naive, exact in zip(("e", "c", "bias"), torch.autograd.grad(scalar, mine), plain_grads,
                                        truth_grads):
        check(f"grad {name}", ours, naive, exact)
