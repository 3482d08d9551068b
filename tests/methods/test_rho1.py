"""RHO-1's selective loss against a float64 materialised-logits reference of the same selection rule, on
every backend tier; plus the claim that the backward touches only the kept rows."""

from __future__ import annotations

import math

import pytest
import torch

from tests.cases import make_case
from tests.helpers import assert_close
from tests.reference import reference_linear_cross_entropy
from xtf_kernels.methods.rho1 import ExcessLossWindow
from xtf_kernels.methods.rho1 import Rho1Loss
from xtf_kernels.methods.rho1 import rho1_loss
from xtf_kernels.ops.registry import get_backend


def reference_kept(excess, labelled, keep_ratio, rows=None):
    """Top floor(keep_ratio * n) labelled tokens by excess (per row when rows is given), earlier index first
    on ties: a plain Python sort over (-excess, flat index)."""
    flat = excess.reshape(-1).tolist()
    ok = labelled.reshape(-1).tolist()
    group_of = [0] * len(flat) if rows is None else [i // rows for i in range(len(flat))]
    kept = [False] * len(flat)
    for group in set(group_of):
        members = sorted((i for i in range(len(flat)) if ok[i] and group_of[i] == group), key=lambda i: (-flat[i], i))
        count = math.floor(round(keep_ratio * len(members), 9))
        for i in members[:count]:
            kept[i] = True
    return torch.tensor(kept).reshape(excess.shape)


def separated_reference(case, ignore_index=-100, seed=0):
    """ref_losses making the excess loss of token i = gap_i, distinct gaps 0.01 apart (far above fp32 /
    bf16 rounding of the loss), so the kept set is unambiguous. Returns (ref_losses fp32, excess fp64)."""
    hidden, weight, *bias = (x.detach().double().cpu() for x in case.leaves())
    ce = reference_linear_cross_entropy(hidden, weight, case.targets.cpu(), bias=bias[0] if bias else None,
                                        ignore_index=ignore_index, reduction="none")
    gen = torch.Generator().manual_seed(seed)
    gaps = torch.randperm(ce.numel(), generator=gen).double().reshape(ce.shape) * 0.01
    return (ce - gaps).float().to(case.targets.device), gaps


def reference_rho1(case, kept, ignore_index=-100):
    """(loss, float64 leaves) with loss = mean over kept of the float64 per-token cross-entropy."""
    leaves = case.float64_leaves()
    hidden, weight, *bias = leaves
    ce = reference_linear_cross_entropy(hidden, weight, case.targets.cpu(), bias=bias[0] if bias else None,
                                        ignore_index=ignore_index, reduction="none")
    count = int(kept.sum())
    loss = (ce * kept.double()).sum() / max(count, 1)
    return loss, leaves


@pytest.mark.parametrize("keep_ratio", [0.6, 0.37, 1.0])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_matches_reference(impl, keep_ratio, bias):
    # the interpreter runs one program at a time; the head op's fp16 path is covered by its own tests
    for dtype in impl.dtypes[:1] if impl.interpret else impl.dtypes:
        case = make_case((3, 29), 31, 123, dtype=dtype, device=impl.device, bias=bias, seed=1)
        ref_losses, excess = separated_reference(case)
        labelled = (case.targets != -100).cpu()
        loss, kept = rho1_loss(case.hidden, case.weight, case.targets, ref_losses, keep_ratio=keep_ratio,
                               bias=case.bias, backend=impl.backend, return_mask=True, chunk_size=16)
        want_kept = reference_kept(excess, labelled, keep_ratio)
        assert torch.equal(kept.cpu(), want_kept)
        assert int(kept.sum()) == math.floor(round(keep_ratio * int(labelled.sum()), 9))
        want, leaves = reference_rho1(case, want_kept)
        assert loss.dtype == torch.float32 and loss.shape == ()
        assert_close(loss, want, dtype, msg="loss")
        grads = torch.autograd.grad(loss, case.leaves())
        want_grads = torch.autograd.grad(want, leaves)
        for name, got, expected in zip(("hidden", "weight", "bias"), grads, want_grads):
            assert got.dtype == dtype
            assert_close(got, expected, dtype, grad=True, msg=f"grad {name}")
        dropped = ~kept.cpu()
        assert (grads[0].cpu()[dropped] == 0).all(), "dropped and ignored tokens get exactly zero gradient"


def test_backward_processes_only_kept_rows(impl, monkeypatch):
    """One head pass over every labelled row forward, one over the kept rows backward: no second full pass."""
    module = get_backend(impl.backend)
    original = module.head_pass
    rows_seen = []

    def spy(hidden, *args, **kwargs):
        rows_seen.append((hidden.shape[0], kwargs.get("grads") is not None))
        return original(hidden, *args, **kwargs)

    monkeypatch.setattr(module, "head_pass", spy)
    case = make_case((4, 23), 16, 57, device=impl.device, seed=2)
    ref_losses, _ = separated_reference(case)
    loss, kept = rho1_loss(case.hidden, case.weight, case.targets, ref_losses, keep_ratio=0.3, backend=impl.backend,
                           return_mask=True)
    labelled = int((case.targets != -100).sum())
    assert rows_seen == [(labelled, False)]
    loss.backward()
    assert rows_seen == [(labelled, False), (int(kept.sum()), True)]
    assert 0 < int(kept.sum()) < labelled


def test_ties_keep_the_earlier_tokens():
    """ref_losses equal to the current losses: every excess is exactly 0, so the first tokens are kept."""
    case = make_case((2, 13), 8, 21, seed=3, ignore_fraction=0.3)
    labelled = case.targets != -100
    from xtf_kernels import linear_cross_entropy

    same = linear_cross_entropy(case.hidden, case.weight, case.targets, reduction="none", backend="torch").detach()
    _, kept = rho1_loss(case.hidden, case.weight, case.targets, same, keep_ratio=0.5, backend="torch",
                        return_mask=True)
    positions = labelled.reshape(-1).nonzero().squeeze(1)
    expected = torch.zeros(26, dtype=torch.bool)
    expected[positions[: int(labelled.sum()) // 2]] = True
    assert torch.equal(kept.reshape(-1), expected)


def test_per_sample_scope():
    case = make_case((3, 17), 8, 21, seed=4)
    ref_losses, excess = separated_reference(case)
    labelled = case.targets != -100
    _, kept = rho1_loss(case.hidden, case.weight, case.targets, ref_losses, keep_ratio=0.5, scope="sample",
                        backend="torch", return_mask=True)
    assert torch.equal(kept, reference_kept(excess, labelled, 0.5, rows=17))


def test_keep_nothing_gives_zero_loss_and_no_backward_pass(monkeypatch):
    module = get_backend("torch")
    calls = []
    original = module.head_pass
    monkeypatch.setattr(module, "head_pass", lambda *a, **k: calls.append(1) or original(*a, **k))
    case = make_case((19,), 8, 21, seed=5)
    loss = rho1_loss(case.hidden, case.weight, case.targets, torch.zeros(19), keep_ratio=0.0, backend="torch")
    loss.backward()
    assert loss.item() == 0.0 and len(calls) == 1
    assert (case.hidden.grad == 0).all() and (case.weight.grad == 0).all()


def test_keep_all_is_the_mean_loss():
    from xtf_kernels import linear_cross_entropy

    case = make_case((2, 11), 8, 21, seed=6, ignore_fraction=0.4)
    loss = rho1_loss(case.hidden, case.weight, case.targets, torch.randn(2, 11), keep_ratio=1.0, backend="torch")
    mean = linear_cross_entropy(case.hidden, case.weight, case.targets, backend="torch")
    torch.testing.assert_close(loss, mean)


def test_module_matches_function():
    case = make_case((2, 15), 8, 21, seed=7)
    ref_losses, _ = separated_reference(case)
    module = Rho1Loss(keep_ratio=0.7, softcap=3.0, backend="torch")
    got, kept = module(case.hidden, case.weight, case.targets, ref_losses, return_mask=True)
    want, want_kept = rho1_loss(case.hidden, case.weight, case.targets, ref_losses, keep_ratio=0.7, softcap=3.0,
                                backend="torch", return_mask=True)
    assert torch.equal(kept, want_kept) and torch.equal(got, want)
    assert "keep_ratio=0.7" in repr(module)


def test_public_names():
    import xtf_kernels

    assert xtf_kernels.methods.rho1_loss is rho1_loss
    assert xtf_kernels.methods.Rho1Loss is Rho1Loss


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(ref_losses=torch.zeros(5)), ValueError, "ref_losses shape"),
        (dict(ref_losses=torch.zeros(2, 5, dtype=torch.long)), TypeError, "ref_losses must be a float"),
        (dict(ref_losses=torch.full((2, 5), math.nan)), ValueError, "non-finite"),
        (dict(keep_ratio=1.5), ValueError, "keep_ratio must be <= 1"),
        (dict(keep_ratio=-0.1), ValueError, "keep_ratio must be >= 0"),
        (dict(scope="batch"), ValueError, "scope must be one of"),
        (dict(targets=torch.zeros(2, 4, dtype=torch.long)), ValueError, "targets shape"),
    ],
)
def test_bad_inputs(kwargs, error, match):
    args = dict(hidden=torch.randn(2, 5, 8), weight=torch.randn(11, 8), targets=torch.zeros(2, 5, dtype=torch.long),
                ref_losses=torch.zeros(2, 5))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        rho1_loss(args.pop("hidden"), args.pop("weight"), args.pop("targets"), args.pop("ref_losses"), **args)
    with pytest.raises(ValueError, match="scope must be one of"):
        Rho1Loss(scope="batch")


@pytest.mark.parametrize("softcap", [None, 2.5])
def test_temperature_divides_the_capped_logits(softcap):
    case = make_case((3, 19), 16, 47, seed=8, bias=True)
    temperature = 0.7
    hidden, weight, bias = case.float64_leaves()
    logits = hidden @ weight.T + bias
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    labelled = case.targets != -100
    safe = torch.where(labelled, case.targets, torch.zeros_like(case.targets))
    ce = torch.nn.functional.cross_entropy((logits / temperature).reshape(-1, 47), safe.reshape(-1),
                                           reduction="none").reshape(3, 19)
    gen = torch.Generator().manual_seed(0)
    gaps = torch.randperm(57, generator=gen).double().reshape(3, 19) * 0.01
    ref_losses = (ce.detach() - gaps).float()
    loss, kept = rho1_loss(case.hidden, case.weight, case.targets, ref_losses, keep_ratio=0.6, bias=case.bias,
                           softcap=softcap, temperature=temperature, backend="torch", return_mask=True)
    want_kept = reference_kept(gaps, labelled, 0.6)
    assert torch.equal(kept, want_kept)
    want = (ce * want_kept.double()).sum() / int(want_kept.sum())
    assert_close(loss, want, msg="loss")
    want_grads = torch.autograd.grad(want, (hidden, weight, bias))
    for got, expected in zip(torch.autograd.grad(loss, case.leaves()), want_grads):
        assert_close(got, expected, grad=True, msg="grad")
    with pytest.raises(ValueError, match="temperature"):
        rho1_loss(case.hidden, case.weight, case.targets, ref_losses, temperature=0.0, backend="torch")


def test_window_ranks_each_micro_batch_against_the_earlier_ones():
    window = ExcessLossWindow(capacity=6)
    labelled = torch.tensor([True, True, False, True])
    # first micro-batch: pool = its own 3 values, keep floor(0.5 * 3) = 1 (the 5.0)
    first = window.select(torch.tensor([1.0, 5.0, 99.0, 2.0]), labelled, 0.5)
    assert first.tolist() == [False, True, False, False] and window.values.tolist() == [1.0, 5.0, 2.0]
    # second: pool = [1, 5, 2] + [4, 0.5, 3] -> keep 3: 5 (window), 4 and 3 (this batch)
    second = window.select(torch.tensor([4.0, 0.5, 7.0, 3.0]), labelled, 0.5)
    assert second.tolist() == [True, False, False, True]
    # third: the window holds the last 6 values [1, 5, 2, 4, 0.5, 3]; a tie with 4 goes to the older value
    # pool of 9, keep floor(0.34 * 9) = 3: 6, 5 and the older 4; this batch's 4 loses the tie
    third = window.select(torch.tensor([4.0, 6.0, 0.0, 0.25]), labelled, 0.34)
    assert third.tolist() == [False, True, False, False]
    assert window.values.tolist() == [4.0, 0.5, 3.0, 4.0, 6.0, 0.25]
    window.reset()
    assert len(window) == 0
    with pytest.raises(ValueError, match="capacity"):
        ExcessLossWindow(0)


def test_window_through_the_loss_and_the_module():
    cases = [make_case((2, 13), 8, 21, seed=10 + i) for i in range(3)]
    refs = [separated_reference(case, seed=i)[0] for i, case in enumerate(cases)]
    module = Rho1Loss(keep_ratio=0.5, backend="torch", window_tokens=1000)
    pool = []
    from xtf_kernels import linear_cross_entropy

    for case, ref in zip(cases, refs):
        labelled = case.targets != -100
        ce = linear_cross_entropy(case.hidden, case.weight, case.targets, reduction="none", backend="torch").detach()
        excess = (ce - ref)[labelled]
        pool.append(excess)
        _, kept = module(case.hidden, case.weight, case.targets, ref, return_mask=True)
        everything = torch.cat(pool)
        threshold = torch.sort(everything, descending=True).values[math.floor(0.5 * everything.numel()) - 1]
        assert torch.equal(kept[labelled], excess >= threshold)  # distinct values: no tie at the threshold
    assert len(module.window) == sum(int((c.targets != -100).sum()) for c in cases)
    assert "window_tokens=1000" in repr(module)
    with pytest.raises(ValueError, match="window"):
        rho1_loss(cases[0].hidden, cases[0].weight, cases[0].targets, refs[0], scope="sample",
                  window=ExcessLossWindow(4), backend="torch")
