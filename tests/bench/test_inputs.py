import pytest
import torch

from xtf_kernels.bench.cases import Case
from xtf_kernels.bench.inputs import IGNORE_INDEX
from xtf_kernels.bench.inputs import make_inputs


def test_same_seed_same_inputs_and_another_seed_differs():
    case = Case(tokens=47, hidden=31, vocab=123, dtype="float32", keep=0.6)
    a, b, c = make_inputs(case, "cpu", 0), make_inputs(case, "cpu", 0), make_inputs(case, "cpu", 1)
    assert torch.equal(a.hidden, b.hidden) and torch.equal(a.weight, b.weight) and torch.equal(a.targets, b.targets)
    assert torch.equal(a.token_weights, b.token_weights)
    assert not torch.equal(a.hidden, c.hidden)


def test_dropped_tokens_agree_between_weights_and_ignored_targets():
    case = Case(tokens=47, hidden=31, vocab=123, dtype="bfloat16", keep=0.6)
    x = make_inputs(case, "cpu")
    assert x.hidden.shape == (47, 31) and x.weight.shape == (123, 31) and x.hidden.dtype is torch.bfloat16
    kept = x.token_weights > 0
    assert int(kept.sum()) == case.kept_tokens == 28
    assert set(x.token_weights.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(x.targets_ignored == IGNORE_INDEX, ~kept)
    assert torch.equal(x.targets_ignored[kept], x.targets[kept])
    assert int(x.targets.min()) >= 0 and int(x.targets.max()) < 123


def test_all_kept_has_no_weights():
    x = make_inputs(Case(tokens=5, hidden=3, vocab=7, dtype="float32"), "cpu")
    assert x.token_weights is None and x.targets_ignored is x.targets


@pytest.mark.parametrize(("mode", "hidden_grad", "weight_grad"),
                         [("fwd_bwd", True, True), ("frozen", True, False), ("fwd", False, False)])
def test_requires_grad_follows_the_mode(mode, hidden_grad, weight_grad):
    x = make_inputs(Case(tokens=5, hidden=3, vocab=7, dtype="float32", mode=mode), "cpu")
    assert (x.hidden.requires_grad, x.weight.requires_grad) == (hidden_grad, weight_grad)


def test_nbytes_counts_each_tensor_once():
    x = make_inputs(Case(tokens=10, hidden=4, vocab=6, dtype="float32", keep=0.5), "cpu")
    assert x.nbytes == 10 * 4 * 4 + 6 * 4 * 4 + 10 * 8 + 10 * 4 + 10 * 8
    y = make_inputs(Case(tokens=10, hidden=4, vocab=6, dtype="float32"), "cpu")
    assert y.nbytes == 10 * 4 * 4 + 6 * 4 * 4 + 10 * 8


def test_clear_grads():
    x = make_inputs(Case(tokens=5, hidden=3, vocab=7, dtype="float32"), "cpu")
    (x.hidden.sum() + x.weight.sum()).backward()
    x.clear_grads()
    assert x.hidden.grad is None and x.weight.grad is None
