"""The chunked path's Triton row kernel against float64 row math, under the interpreter (and on CUDA).

The kernel is given raw fp32 logits directly, so the reference is exact row math: softcap / temperature,
softmax statistics and the gradient of the upstream-weighted per-row outputs with respect to the raw
logits (autograd in float64).
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from tests.ops._triton.head_reference import objective
from tests.ops._triton.head_reference import random_row_grads
from tests.ops._triton.head_reference import row_statistics
from xtf_kernels.ops.spec import HeadSpec
from xtf_kernels.ops.spec import RowGrads

pytestmark = pytest.mark.interpret

SPECS = {
    "plain": HeadSpec(),
    "softcap": HeadSpec(softcap=2.5),
    "temperature": HeadSpec(inv_temperature=1 / 0.7),
    "smoothing+z_loss": HeadSpec(label_smoothing=0.1, z_loss=1e-2),
    "all": HeadSpec(softcap=2.5, inv_temperature=1 / 0.7, label_smoothing=0.1, z_loss=1e-2),
}


@pytest.fixture(scope="module")
def row_pass(triton_interpret):
    from xtf_kernels.ops._triton.row_kernel import row_pass

    return row_pass


def _reference(raw, targets, spec, grads):
    """(lse, target_logit, mean_logit, entropy, grad wrt raw logits) in float64."""
    raw64 = raw.double().requires_grad_()
    z = (spec.softcap * torch.tanh(raw64 / spec.softcap) if spec.softcap else raw64) * spec.inv_temperature
    stats = row_statistics(z, targets)
    grad = None
    if grads is not None:
        (grad,) = torch.autograd.grad(objective(stats, grads, spec), raw64)
    return (*(s.detach() for s in stats), grad)


def _raw_logits(rows, vocab, scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=gen) * scale, torch.randint(0, vocab, (rows,), generator=gen)


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("rows,vocab", [(13, 123), (1, 1), (3, 64), (5, 200)], ids=str)
def test_statistics_and_gradient_match_reference(row_pass, rows, vocab, spec_name):
    spec = SPECS[spec_name]
    raw, targets = _raw_logits(rows, vocab)
    grads = random_row_grads(rows)
    expected = _reference(raw, targets, spec, grads)
    z = raw.clone()
    lse, target_logit, mean_logit, entropy, grad = row_pass(
        z, targets, spec, want_entropy=True, want_mean_logit=True, grads=grads,
    )
    for name, got, want in zip(("lse", "target_logit", "mean_logit", "entropy"), (lse, target_logit, mean_logit,
                                                                                   entropy), expected):
        assert got.dtype == torch.float32
        assert_close(got, want, msg=name)
    assert grad.data_ptr() == z.data_ptr(), "the fp32 gradient is written in place"
    assert_close(grad, expected[4], grad=True, msg="grad")


@pytest.mark.parametrize("fields", [("loss",), ("logprob",), ("entropy",), ("lse",), ("logprob", "entropy")],
                         ids="+".join)
def test_each_upstream_gradient_alone(row_pass, fields):
    spec = SPECS["all"]
    raw, targets = _raw_logits(7, 150, seed=3)
    grads = random_row_grads(7, fields)
    *_, want = _reference(raw, targets, spec, grads)
    *_, grad = row_pass(raw.clone(), targets, spec, grads=grads)
    assert_close(grad, want, grad=True)


def test_statistics_only_leaves_logits_untouched(row_pass):
    raw, targets = _raw_logits(6, 99)
    z = raw.clone()
    lse, target_logit, mean_logit, entropy, grad = row_pass(z, targets, SPECS["all"])
    assert mean_logit is None and entropy is None and grad is None
    assert torch.equal(z, raw)
    expected = _reference(raw, targets, SPECS["all"], None)
    assert_close(lse, expected[0])
    assert_close(target_logit, expected[1])


def test_recompute_with_saved_lse_and_entropy(row_pass):
    """With the forward's lse and entropy given, one pass writes the gradient (no statistics pass)."""
    spec = SPECS["all"]
    raw, targets = _raw_logits(9, 130, seed=4)
    grads = random_row_grads(9)
    lse, target_logit, _, entropy, want = _reference(raw, targets, spec, grads)
    saved_lse, saved_entropy = lse.float(), entropy.float()
    out_lse, out_target, _, out_entropy, grad = row_pass(
        raw.clone(), targets, spec, want_entropy=True, grads=grads, lse=saved_lse, entropy=saved_entropy,
    )
    assert out_lse is saved_lse and out_entropy is saved_entropy
    assert_close(out_target, target_logit)
    assert_close(grad, want, grad=True)


@pytest.mark.parametrize("keep_fp32_grad", [False, True])
def test_half_gradient_written_directly(row_pass, keep_fp32_grad):
    spec = SPECS["all"]
    raw, targets = _raw_logits(11, 123, seed=5)
    grads = random_row_grads(11, ("loss", "entropy"))
    *_, want = _reference(raw, targets, spec, grads)
    z = raw.clone()
    grad_out = torch.full((11, 123), float("nan"), dtype=torch.float16)
    *_, grad = row_pass(z, targets, spec, grads=grads, grad_out=grad_out, keep_fp32_grad=keep_fp32_grad)
    assert_close(grad_out, want, torch.float16, grad=True, msg="16-bit gradient")
    if keep_fp32_grad:
        assert grad is z
        assert_close(z, want, grad=True)
    else:
        assert grad is grad_out
        assert torch.equal(z, raw), "without keep_fp32_grad the fp32 logits are not overwritten"


def test_minus_inf_logits_are_masked_vocabulary(row_pass):
    """-inf logits (a whole first block and scattered columns): p = 0 there, finite entropy and gradients
    equal to the same rows without those columns."""
    spec = HeadSpec(inv_temperature=1 / 0.7, z_loss=1e-2)
    raw, _ = _raw_logits(6, 150, seed=7)
    masked = torch.zeros(150, dtype=torch.bool)
    masked[:64] = True
    masked[[70, 99, 149]] = True
    raw[:, masked] = float("-inf")
    kept = (~masked).nonzero().squeeze(1)
    targets = kept[torch.randint(0, kept.numel(), (6,), generator=torch.Generator().manual_seed(8))]
    grads = random_row_grads(6)
    expected = _reference(raw[:, kept], torch.searchsorted(kept, targets), spec, grads)
    lse, target_logit, _, entropy, grad = row_pass(raw.clone(), targets, spec, want_entropy=True, grads=grads)
    for name, got, want in zip(("lse", "target_logit", "entropy"), (lse, target_logit, entropy),
                               (expected[0], expected[1], expected[3])):
        assert_close(got, want, msg=name)
    assert torch.all(grad[:, masked] == 0)
    assert_close(grad[:, kept], expected[4], grad=True)


def test_extreme_logits_stay_finite(row_pass):
    raw, targets = _raw_logits(5, 77, scale=1e4, seed=6)
    grads = RowGrads(loss=torch.ones(5), entropy=torch.ones(5))
    expected = _reference(raw, targets, HeadSpec(), grads)
    lse, target_logit, _, entropy, grad = row_pass(raw.clone(), targets, HeadSpec(), want_entropy=True, grads=grads)
    for got in (lse, entropy, grad):
        assert torch.isfinite(got).all()
    assert_close(lse, expected[0])
    assert_close(grad, expected[4], grad=True)
    # entropy = lse - sum p z cancels logits of size 1e4: fp32 leaves an error of a few ulp of the logits.
    logit_scale = expected[0].abs().max().item()
    torch.testing.assert_close(entropy.double(), expected[3], atol=4 * 2**-24 * logit_scale, rtol=0)
