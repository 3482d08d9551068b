"""The chunked path's Triton row kernel against float64 row math, under the interpreter (and on CUDA).

The kernel is given raw fp32 logits directly, so the reference is exact row math: softcap / temperature,
softmax statistics and the gradient of the upstream-weighted per-row outputs with respect to the raw
logits (autograd in float64).
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from tests.ops._triton.head_reference import final_logits
from tests.ops._triton.head_reference import objective
from tests.ops._triton.head_reference import random_class_weights
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
    "logit_scale": HeadSpec(logit_scale=0.125),
    "softcap+logit_scale": HeadSpec(softcap=2.5, logit_scale=4.0),
    "all": HeadSpec(softcap=2.5, inv_temperature=1 / 0.7, label_smoothing=0.1, z_loss=1e-2, logit_scale=0.8),
}


@pytest.fixture(scope="module")
def row_pass(triton_interpret):
    from xtf_kernels.ops._triton.row_kernel import row_pass

    return row_pass


def _reference(raw, targets, spec, grads, class_weights=None):
    """(lse, target_logit, mean_logit, entropy, grad wrt raw logits) in float64."""
    raw64 = raw.double().requires_grad_()
    z = final_logits(raw64, spec)
    stats = row_statistics(z, targets, class_weights)
    grad = None
    if grads is not None:
        (grad,) = torch.autograd.grad(objective(stats, grads, spec, z, targets, class_weights), raw64)
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
    torch.testing.assert_close(entropy.double(), expected[3], atol=1e-6, rtol=0)


def test_entropy_exact_at_large_logits(row_pass):
    """Logits of 1e4 + O(1): the entropy (O(1)) comes from sums shifted by the row maximum, so it is exact to
    fp32 rounding of O(1) values, not of 1e4 (an unshifted sum p z ~ 1e4 minus lse ~ 1e4 loses ~1e-3); the
    gradient takes p and the entropy term from the same shifted sums, so it is exact too."""
    gen = torch.Generator().manual_seed(9)
    raw = 1e4 + torch.randn(7, 150, generator=gen) * 2
    targets = torch.randint(0, 150, (7,), generator=gen)
    grads = RowGrads(loss=torch.ones(7), entropy=torch.ones(7))
    lse, target_logit, _, entropy, want = _reference(raw, targets, HeadSpec(), grads)
    got_lse, _, _, got_entropy, grad = row_pass(raw.clone(), targets, HeadSpec(), want_entropy=True, grads=grads)
    assert (entropy > 1).all()
    torch.testing.assert_close(got_entropy.double(), entropy, atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(got_lse.double(), lse, atol=0, rtol=2e-7)
    assert_close(grad, want, grad=True)


@pytest.mark.parametrize("scale", [1e-3, 0.1, 3.0, 60.0])
def test_softcap_exact_to_fp32_rounding(row_pass, scale):
    """Gemma-2's softcap (s = 30) over raw logits from 1e-3 to 60: final logits and gradients within a few fp32
    ulp of float64 (Liger's fp32 tolerance, rtol 1e-6). tanh as (1 - e) / (1 + e) alone missed it by 30x at
    |y / s| ~ 1e-4, and 1 - tanh^2 as 1 - t * t loses its digits for large |y / s|."""
    spec = HeadSpec(softcap=30.0)
    gen = torch.Generator().manual_seed(10)
    raw = torch.randn(6, 100, generator=gen) * scale
    targets = torch.randint(0, 100, (6,), generator=gen)
    grads = RowGrads(loss=torch.ones(6))
    lse, target_logit, mean_logit, _, want = _reference(raw, targets, spec, grads)
    got_lse, got_target, got_mean, _, grad = row_pass(raw.clone(), targets, spec, want_mean_logit=True, grads=grads)
    torch.testing.assert_close(got_target.double(), target_logit, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(got_mean.double(), mean_logit, rtol=1e-6, atol=1e-7 * scale)
    torch.testing.assert_close(got_lse.double(), lse, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad.double(), want, rtol=1e-6, atol=1e-8)


def test_slope_exact_where_tanh_saturates(row_pass):
    """|y / s| from 4 to 12: 1 - tanh^2 from 1.3e-3 down to 1.5e-10, relative error of a few ulp (1 - t * t
    would keep 1-4 digits there, or round to 0)."""
    spec = HeadSpec(softcap=1.0)
    raw = torch.linspace(4.0, 12.0, 60).repeat(2, 1)
    raw[1] = -raw[1]
    targets = torch.tensor([0, 59])
    grads = RowGrads(logprob=torch.ones(2))
    *_, want = _reference(raw, targets, spec, grads)
    *_, grad = row_pass(raw.clone(), targets, spec, grads=grads)
    torch.testing.assert_close(grad.double(), want, rtol=2e-6, atol=0)


@pytest.mark.parametrize("spec_name", ["plain", "all"])
def test_class_weights_match_torch_semantics(row_pass, spec_name):
    """Per-class weights: mean logit (1 / V) sum cw z and the gradient of torch's weighted, label-smoothed
    cross-entropy (plus z-loss), with every other upstream gradient at once."""
    spec = SPECS[spec_name]._replace(label_smoothing=0.15)
    raw, targets = _raw_logits(13, 123, seed=11)
    class_weights = random_class_weights(123)
    targets[0] = 0  # a target whose class weight is 0
    grads = random_row_grads(13)
    expected = _reference(raw, targets, spec, grads, class_weights)
    lse, target_logit, mean_logit, entropy, grad = row_pass(
        raw.clone(), targets, spec, want_entropy=True, want_mean_logit=True, grads=grads,
        class_weights=class_weights,
    )
    for name, got, want in zip(("lse", "target_logit", "mean_logit", "entropy"),
                               (lse, target_logit, mean_logit, entropy), expected):
        assert_close(got, want, msg=name)
    assert_close(grad, expected[4], grad=True, msg="grad")


def test_class_weights_in_the_recomputing_backward(row_pass):
    spec = SPECS["all"]
    raw, targets = _raw_logits(9, 130, seed=12)
    class_weights = random_class_weights(130, seed=4)
    grads = random_row_grads(9, ("loss",))
    lse, *_, want = _reference(raw, targets, spec, grads, class_weights)
    *_, grad = row_pass(raw.clone(), targets, spec, grads=grads, lse=lse.float(), class_weights=class_weights)
    assert_close(grad, want, grad=True)


def test_argmax_first_maximum(row_pass):
    """The first index of the maximal final logit, torch.argmax's tie rule, across the kernel's column blocks
    (64 under the interpreter): ties inside a block, across blocks, after softcap; all -inf -> 0."""
    raw, targets = _raw_logits(5, 150, seed=13)
    raw[0, [3, 70]] = 50.0  # tie across blocks
    raw[1, [100, 101]] = 50.0  # tie inside a block
    raw[2, 149] = 50.0  # the last column
    raw[3] = float("-inf")
    raw[4, [20, 140]] = 1e4  # distinct raw values that softcap saturates to the same fp32 logit
    targets[3] = 0
    spec = HeadSpec(softcap=2.0, inv_temperature=1 / 0.7)
    *_, argmax = row_pass(raw.clone(), targets, spec, want_argmax=True)
    assert argmax.dtype == torch.int64
    assert argmax.tolist() == [3, 100, 149, 0, 20]
    z = final_logits(raw.double(), spec)
    assert torch.equal(argmax[:3], z[:3].argmax(-1))
