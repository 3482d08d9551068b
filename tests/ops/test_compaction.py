"""Dropped rows never reach the backend; frozen parameters get no gradient work."""

from __future__ import annotations

import pytest
import torch

import xtf_kernels as xk
from tests.cases import make_case
from xtf_kernels.ops import compaction
from xtf_kernels.ops._torch import backend as torch_backend


@pytest.fixture
def head_pass_calls(monkeypatch):
    calls = []
    real = torch_backend.head_pass

    def spy(hidden, weight, bias, targets, spec, **kwargs):
        calls.append(dict(rows=hidden.shape[0], **kwargs))
        return real(hidden, weight, bias, targets, spec, **kwargs)

    monkeypatch.setattr(torch_backend, "head_pass", spy)
    return calls


def test_only_kept_rows_reach_the_backend(head_pass_calls):
    case = make_case((100,), 16, 50, token_weights=True)
    kept = int(((case.targets != -100) & (case.token_weights != 0)).sum())
    loss = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, token_weights=case.token_weights,
                                   reduction="none", backend="torch")
    loss.sum().backward()
    assert [c["rows"] for c in head_pass_calls] == [kept, kept]


def test_backward_skips_rows_with_zero_upstream_gradient(head_pass_calls):
    case = make_case((100,), 16, 50, ignore_fraction=0.0)
    loss = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, reduction="none", backend="torch")
    upstream = torch.zeros(100)
    upstream[:30] = 1.0
    loss.backward(upstream)
    assert [c["rows"] for c in head_pass_calls] == [100, 30]
    assert torch.all(case.hidden.grad[30:] == 0)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_frozen_weight_gets_no_weight_gradient_work(head_pass_calls, reduction):
    case = make_case((40,), 16, 50)
    weight = case.weight.detach()
    loss = xk.linear_cross_entropy(case.hidden, weight, case.targets, reduction=reduction, backend="torch")
    loss.backward(torch.ones_like(loss))
    assert case.hidden.grad is not None
    assert not any(c.get("need_grad_weight") for c in head_pass_calls)
    assert any(c.get("need_grad_hidden") for c in head_pass_calls)


def test_no_gradient_work_under_no_grad(head_pass_calls):
    case = make_case((40,), 16, 50)
    with torch.no_grad():
        xk.linear_cross_entropy(case.hidden, case.weight, case.targets, backend="torch")
    assert head_pass_calls[0].get("grads") is None


def test_compaction_gather_and_scatter_round_trip():
    targets = torch.tensor([1, -100, 2, 3, -100])
    weights = torch.tensor([1.0, 1.0, 0.0, 2.0, 1.0])
    comp = compaction.compact_rows(targets, weights, -100, vocab=5)
    assert comp.kept == 2 and comp.index.tolist() == [0, 3]
    values = torch.tensor([10.0, 30.0])
    assert comp.scatter(values).tolist() == [10.0, 0.0, 0.0, 30.0, 0.0]
    everything = compaction.compact_rows(torch.tensor([0, 1]), None, -100, vocab=2)
    assert everything.index is None and everything.gather(values) is values


def test_static_rows_slots_masks_and_poison():
    targets = torch.tensor([1, -100, 2, 9, 3, -100])  # 9 is out of range for V 5
    weights = torch.tensor([1.0, 1.0, 0.0, 1.0, -2.0, 1.0])  # row 4: negative weight
    gathered = compaction.static_rows(targets, weights, -100, vocab=5, max_kept=3)
    assert gathered.kept == 3 and gathered.index.tolist() == [0, 6, 6] and int(gathered.count) == 1
    assert gathered.row_mask.tolist() == [True, False, False]
    assert gathered.gather(targets).tolist() == [1, 0, 0]  # masked slots read target 0
    hidden = torch.arange(12.0).view(6, 2)
    assert gathered.gather(hidden).tolist() == [[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    assert gathered.scatter(torch.tensor([5.0, 7.0, 8.0]), fill=-1.0).tolist() == [5.0, -1, -1, -1, -1, -1]
    assert gathered.poison.tolist() == [False, False, False, True, True, False]
    masked = compaction.static_rows(targets, None, -100, vocab=5, max_kept=10)
    assert masked.index is None and masked.kept == 6 and masked.row_mask.tolist() == [1, 0, 1, 0, 1, 0]
    assert masked.scatter(torch.arange(6.0)).tolist() == [0.0, 0.0, 2.0, 0.0, 4.0, 0.0]
    overflow = compaction.static_rows(targets, None, -100, vocab=5, max_kept=2)
    assert overflow.poison.all()  # 3 kept rows, 2 slots: every output NaN rather than a silent loss
    backward = compaction.static_rows(targets, weights, -100, vocab=5, max_kept=3, validate=False)
    assert backward.poison is None and backward.index.tolist() == [0, 4, 6]  # any sign of upstream gradient


def test_backend_row_mover_is_used_for_cuda_tensors_only():
    moved = []

    class Mover:
        @staticmethod
        def gather_rows(x, index):
            moved.append("gather")
            return x.index_select(0, index)

        @staticmethod
        def scatter_rows(values, index, total, fill):
            moved.append("scatter")
            return values.new_full((total, *values.shape[1:]), fill).index_copy_(0, index, values)

    targets = torch.tensor([1, -100, 2])
    comp = compaction.compact_rows(targets, None, -100, vocab=5, mover=Mover)
    assert comp.gather(targets).tolist() == [1, 2] and comp.scatter(torch.ones(2)).tolist() == [1.0, 0.0, 1.0]
    assert moved == []  # CPU tensors keep index_select / index_copy_
    without = compaction.compact_rows(targets, None, -100, vocab=5, mover=object())
    assert without.mover is None
