"""reduction="none" with a per-token upstream gradient, 60% of the tokens kept through token_weights and
every option on (bias, softcap, label smoothing, z-loss), on every path, against the float64 reference with
materialised logits; dropped tokens must get exactly zero loss and gradient. Also proves the custom op ran."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import xtf_kernels as xk
from tests.reference import reference_linear_cross_entropy

from .paths import PATH_IDS
from .paths import PATHS
from .paths import use_path
from .support import loss_tolerance
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
    assert errors["per_token"] <= loss_tolerance(target.device), errors
    assert max(errors["d_hidden"], errors["d_weight"], errors["d_bias"]) <= 1e-2, errors
