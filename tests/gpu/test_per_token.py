"""Per-token outputs with per-token upstream gradients, 60% of the tokens kept and every option on, on every
path, against the float64 references with materialised logits; dropped tokens must get exactly zero output
and gradient, and the custom ops must have run.

linear_cross_entropy: reduction="none", tokens dropped through token_weights, bias, softcap, label
smoothing, z-loss. token_logprobs: log-prob, entropy and log-sum-exp, all differentiated, tokens dropped
through ignore_index, bias, softcap, temperature."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import xtf_kernels as xk
from tests.reference import reference_linear_cross_entropy
from tests.reference import reference_token_logprobs

from .paths import PATH_IDS
from .paths import PATHS
from .paths import use_path
from .support import LOSS_TOL
from .support import make_head
from .support import relative_error

pytestmark = pytest.mark.cuda

OPTIONS = dict(softcap=30.0, label_smoothing=0.1, z_loss=1e-4)


class XtfOps(TorchDispatchMode):
    """Counts the torch.ops.xtf.* calls dispatched while active."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "xtf":
            self.calls.append(func.name())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_per_token_gradients_sixty_percent_kept_every_option(target, path, monkeypatch, report):
    use_path(path, target.device, monkeypatch)
    # Odd sizes: no dimension a multiple of a tile.
    tokens, hidden, vocab = target.size(4099, 47), target.size(2047, 31), target.size(128257, 123)
    head = make_head(tokens, hidden, vocab, torch.bfloat16, target.device, keep=0.6, logit_std=8.0, seed=3)
    gen = torch.Generator(device=target.device).manual_seed(4)
    bias = (torch.randn(vocab, generator=gen, device=target.device) * 0.5).to(torch.bfloat16).requires_grad_()
    upstream = torch.randn(tokens, generator=gen, device=target.device)
    with XtfOps() as ops:
        per_token = xk.linear_cross_entropy(head.hidden, head.weight, head.targets, bias=bias,
                                            token_weights=head.token_weights, reduction="none",
                                            backend=path.backend, **OPTIONS)
        grads = torch.autograd.grad(per_token, [head.hidden, head.weight, bias], upstream)
    leaves = [x.detach().double().requires_grad_() for x in (head.hidden, head.weight, bias)]
    ref = reference_linear_cross_entropy(leaves[0], leaves[1], head.targets, bias=leaves[2],
                                         token_weights=head.token_weights, reduction="none", **OPTIONS)
    ref_grads = torch.autograd.grad(ref, leaves, upstream.double())
    errors = {"per_token": relative_error(per_token, ref)}
    errors.update({name: relative_error(g, r) for name, g, r in zip(("d_hidden", "d_weight", "d_bias"), grads,
                                                                       ref_grads)})
    dropped = head.token_weights == 0
    report("per_token_all_options", path=path.name, tokens=tokens, hidden=hidden, vocab=vocab,
           kept=int((~dropped).sum()), xtf_ops=sorted(set(ops.calls)), rel_err=errors)
    assert ops.calls, "no torch.ops.xtf op ran"
    assert torch.all(per_token[dropped] == 0) and torch.all(grads[0][dropped] == 0)
    assert errors["per_token"] <= LOSS_TOL, errors
    assert max(errors["d_hidden"], errors["d_weight"], errors["d_bias"]) <= 1e-2, errors


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_token_logprobs_entropy_lse_gradients_sixty_percent_kept(target, path, monkeypatch, report):
    use_path(path, target.device, monkeypatch)
    tokens, hidden, vocab = target.size(4099, 47), target.size(2047, 31), target.size(128257, 123)
    head = make_head(tokens, hidden, vocab, torch.bfloat16, target.device, logit_std=8.0, seed=7)
    gen = torch.Generator(device=target.device).manual_seed(8)
    bias = (torch.randn(vocab, generator=gen, device=target.device) * 0.5).to(torch.bfloat16).requires_grad_()
    targets = head.targets.clone()
    targets[torch.rand(tokens, generator=gen, device=target.device) >= 0.6] = -100
    upstream = [torch.randn(tokens, generator=gen, device=target.device) for _ in range(3)]
    options = dict(bias=bias, temperature=0.7, softcap=30.0)
    with XtfOps() as ops:
        out = xk.token_logprobs(head.hidden, head.weight, targets, return_entropy=True, return_lse=True,
                                backend=path.backend, **options)
        outputs = (out.logprobs, out.entropy, out.lse)
        total = sum((o * g).sum() for o, g in zip(outputs, upstream))
        grads = torch.autograd.grad(total, [head.hidden, head.weight, bias])
    leaves = [x.detach().double().requires_grad_() for x in (head.hidden, head.weight, bias)]
    ref_outputs = reference_token_logprobs(leaves[0], leaves[1], targets, bias=leaves[2], temperature=0.7,
                                           softcap=30.0)
    ref_grads = torch.autograd.grad(sum((o * g.double()).sum() for o, g in zip(ref_outputs, upstream)), leaves)
    errors = {name: relative_error(o, r) for name, o, r in zip(("logprobs", "entropy", "lse"), outputs, ref_outputs)}
    errors.update({name: relative_error(g, r) for name, g, r in zip(("d_hidden", "d_weight", "d_bias"), grads,
                                                                       ref_grads)})
    dropped = targets == -100
    report("token_logprobs_all_options", path=path.name, tokens=tokens, hidden=hidden, vocab=vocab,
           kept=int((~dropped).sum()), xtf_ops=sorted(set(ops.calls)), rel_err=errors)
    assert ops.calls, "no torch.ops.xtf op ran"
    assert all(torch.all(o[dropped] == 0) for o in outputs) and torch.all(grads[0][dropped] == 0)
    assert max(errors["logprobs"], errors["entropy"], errors["lse"]) <= LOSS_TOL, errors
    assert max(errors["d_hidden"], errors["d_weight"], errors["d_bias"]) <= 1e-2, errors
