"""N * V > 2^31 on every path: the rows past 2^31 / V (16,744 at V 128256) are where 32-bit offsets wrap."""

from __future__ import annotations

import pytest
import torch

import xtf_kernels as xk

from .paths import PATH_IDS
from .paths import PATHS
from .paths import use_path
from .support import LOSS_TOL
from .support import chunked_float64_reference
from .support import make_head
from .support import relative_error

pytestmark = pytest.mark.cuda

VOCAB = 128256
TOKENS = 16800  # 16800 * 128256 = 2,154,700,800 > 2^31 = 2,147,483,648


@pytest.fixture(scope="module")
def large(target):
    # H 256 keeps the GEMMs short: the offsets, not the arithmetic, are under test.
    tokens, hidden, vocab = target.size(TOKENS, 300), target.size(256, 16), target.size(VOCAB, 1000)
    head = make_head(tokens, hidden, vocab, torch.bfloat16, target.device, keep=0.6, seed=2)
    return head, chunked_float64_reference(head)


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_more_than_2_31_logits(target, large, path, monkeypatch, report):
    use_path(path, target.device, monkeypatch)
    head, ref = large
    tokens, vocab = head.hidden.shape[0], head.weight.shape[0]
    assert target.dry_run or tokens * vocab > 2**31
    per_token = xk.linear_cross_entropy(head.hidden, head.weight, head.targets, token_weights=head.token_weights,
                                        reduction="none", backend=path.backend)
    loss = per_token.sum() / head.token_weights.sum()
    d_hidden, d_weight = torch.autograd.grad(loss, head.leaves)
    kept = head.token_weights > 0
    tail = slice(2**31 // vocab, None) if not target.dry_run else slice(tokens // 2, None)
    errors = {
        "per_token": relative_error(per_token[kept] / head.token_weights[kept], ref.per_token[kept]),
        "per_token_tail": relative_error((per_token / head.token_weights.clamp_min(1e-30))[tail][kept[tail]],
                                         ref.per_token[tail][kept[tail]]),
        "d_hidden": relative_error(d_hidden, ref.grad_hidden),
        "d_hidden_tail": relative_error(d_hidden[tail], ref.grad_hidden[tail]),
        "d_weight": relative_error(d_weight, ref.grad_weight),
    }
    report("n_times_v_over_2_31", path=path.name, tokens=tokens, vocab=vocab, logits=tokens * vocab, rel_err=errors)
    assert torch.all(per_token[~kept] == 0) and torch.all(d_hidden[~kept] == 0)
    assert max(errors["per_token"], errors["per_token_tail"]) <= LOSS_TOL, errors
    assert max(errors["d_hidden"], errors["d_hidden_tail"], errors["d_weight"]) <= 1e-2, errors
