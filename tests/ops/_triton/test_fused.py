"""The fused path (logits never in memory) against the float64 head-pass reference and the chunked path.

Interpreter shapes are tiny and odd (V not a multiple of any tile; the interpreter's 16 x 32 tiles and
its 4 assumed multiprocessors make even 13 rows cross several K steps, H slices and vocabulary splits).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tests.helpers import assert_close
from tests.ops._triton.head_reference import random_class_weights
from tests.ops._triton.head_reference import random_head
from tests.ops._triton.head_reference import random_row_grads
from tests.ops._triton.head_reference import reference_head_pass
from xtf_kernels.ops.spec import HeadPassRequest
from xtf_kernels.ops.spec import HeadSpec
from xtf_kernels.ops.spec import RowGrads

ALL_OPTIONS = HeadSpec(softcap=2.5, inv_temperature=1 / 0.7, label_smoothing=0.1, z_loss=1e-2, logit_scale=0.8)
STAT_NAMES = ("lse", "target_logit", "mean_logit", "entropy")
GRAD_NAMES = ("grad_hidden", "grad_weight", "grad_bias")


@pytest.fixture(scope="module")
def fused_statistics(triton_interpret):
    from xtf_kernels.ops._triton.fused_forward import fused_statistics

    return fused_statistics


@pytest.fixture(scope="module")
def fused(triton_interpret):
    from xtf_kernels.ops._triton.fused import fused_head_pass

    def run(hidden, weight, bias, targets, spec, config=None, **options):
        return fused_head_pass(hidden, weight, bias, targets, spec, HeadPassRequest(**options), config)

    return run


def _compare(result, expected, dtype, *, grads=True):
    for name in STAT_NAMES:
        got = getattr(result, name)
        if got is not None:
            assert got.dtype == torch.float32, name
            assert_close(got, getattr(expected, name), dtype, msg=name)
    if not grads:
        return
    for name in GRAD_NAMES:
        got, want = getattr(result, name), getattr(expected, name)
        if got is None:
            continue
        assert got.dtype == (dtype if name == "grad_hidden" else torch.float32), name
        assert_close(got, want, dtype, grad=True, msg=name)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("rows,hidden_size,vocab", [(13, 31, 123), (1, 17, 5), (40, 24, 70)], ids=str)
def test_every_option_matches_reference(fused, rows, hidden_size, vocab, dtype):
    hidden, weight, bias, targets = random_head(rows, hidden_size, vocab, dtype, bias=True)
    grads = random_row_grads(rows)
    expected = reference_head_pass(hidden, weight, bias, targets, ALL_OPTIONS, grads)
    result = fused(hidden, weight, bias, targets, ALL_OPTIONS, want_entropy=True, want_mean_logit=True, grads=grads,
                   need_grad_hidden=True, need_grad_weight=True, need_grad_bias=True)
    assert all(getattr(result, name) is not None for name in STAT_NAMES + GRAD_NAMES)
    _compare(result, expected, dtype)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_plain_cross_entropy_matches_reference(fused, dtype):
    hidden, weight, _, targets = random_head(13, 31, 123, dtype)
    grads = RowGrads(loss=torch.rand(13))
    expected = reference_head_pass(hidden, weight, None, targets, HeadSpec(), grads)
    result = fused(hidden, weight, None, targets, HeadSpec(), grads=grads, need_grad_hidden=True,
                   need_grad_weight=True)
    assert result.mean_logit is None and result.entropy is None and result.grad_bias is None
    _compare(result, expected, dtype)


@pytest.mark.interpret
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, True), (False, False, True)],
                         ids=["hidden-only", "frozen-hidden", "bias-only"])
def test_only_requested_gradients(fused, needs):
    need_h, need_w, need_b = needs
    hidden, weight, bias, targets = random_head(13, 31, 123, torch.float32, bias=True)
    grads = random_row_grads(13, ("loss", "entropy"))
    expected = reference_head_pass(hidden, weight, bias, targets, ALL_OPTIONS, grads)
    result = fused(hidden, weight, bias, targets, ALL_OPTIONS, grads=grads, need_grad_hidden=need_h,
                   need_grad_weight=need_w, need_grad_bias=need_b)
    for name, need in zip(GRAD_NAMES, needs):
        assert (getattr(result, name) is not None) == need, name
    _compare(result, expected, torch.float32)


@pytest.mark.interpret
def test_no_rows(fused):
    hidden, weight, bias, targets = random_head(0, 31, 123, torch.float32, bias=True)
    result = fused(hidden, weight, bias, targets, ALL_OPTIONS, want_entropy=True, want_mean_logit=True,
                   grads=random_row_grads(0), need_grad_hidden=True, need_grad_weight=True, need_grad_bias=True)
    assert all(getattr(result, name).shape == (0,) for name in STAT_NAMES)
    assert result.grad_hidden.shape == (0, 31)
    assert torch.equal(result.grad_weight, torch.zeros(123, 31)) and torch.equal(result.grad_bias, torch.zeros(123))


@pytest.mark.interpret
def test_recompute_with_saved_statistics(fused):
    """Given lse and entropy (the recomputing backward) the forward is skipped; target logits are formed alone."""
    hidden, weight, bias, targets = random_head(13, 31, 123, torch.float32, bias=True, seed=2)
    grads = random_row_grads(13, ("logprob", "entropy", "lse"))
    spec = HeadSpec(softcap=2.5, inv_temperature=1 / 0.7)
    expected = reference_head_pass(hidden, weight, bias, targets, spec, grads)
    lse, entropy = expected.lse.float(), expected.entropy.float()
    result = fused(hidden, weight, bias, targets, spec, grads=grads, lse=lse, entropy=entropy, want_entropy=True,
                   need_grad_hidden=True, need_grad_weight=True, need_grad_bias=True)
    assert result.lse is lse and result.entropy is entropy
    _compare(result, expected, torch.float32)


@pytest.mark.interpret
def test_strided_inputs(fused):
    """hidden a column-strided view and weight a transposed view: the kernels follow the strides."""
    hidden, weight, _, targets = random_head(13, 31, 123, torch.float32, seed=3)
    strided_hidden = torch.zeros(13, 62)
    strided_hidden[:, ::2] = hidden
    hidden_view = strided_hidden[:, ::2]
    weight_view = weight.t().contiguous().t()
    assert not hidden_view.is_contiguous() and not weight_view.is_contiguous()
    grads = random_row_grads(13, ("loss",))
    expected = reference_head_pass(hidden, weight, None, targets, HeadSpec(), grads)
    result = fused(hidden_view, weight_view, None, targets, HeadSpec(), grads=grads, need_grad_hidden=True,
                   need_grad_weight=True)
    _compare(result, expected, torch.float32)


@pytest.mark.interpret
def test_minus_inf_bias_masks_vocabulary(fused):
    """A -inf bias on the whole first tile and scattered entries: equal to the head without those entries,
    zero gradients for them, finite entropy."""
    hidden, weight, bias, targets = random_head(13, 31, 123, torch.float32, bias=True, seed=5)
    masked = torch.zeros(123, dtype=torch.bool)
    masked[:32] = True
    masked[[40, 77, 122]] = True
    bias[masked] = float("-inf")
    kept = (~masked).nonzero().squeeze(1)
    targets = kept[targets % kept.numel()]
    spec = HeadSpec(inv_temperature=1 / 0.7, z_loss=1e-2)
    grads = random_row_grads(13)
    expected = reference_head_pass(hidden, weight[kept], bias[kept], torch.searchsorted(kept, targets), spec, grads)
    result = fused(hidden, weight, bias, targets, spec, want_entropy=True, grads=grads, need_grad_hidden=True,
                   need_grad_weight=True, need_grad_bias=True)
    assert torch.all(result.grad_weight[masked] == 0) and torch.all(result.grad_bias[masked] == 0)
    _compare(result._replace(grad_weight=result.grad_weight[kept], grad_bias=result.grad_bias[kept]), expected,
             torch.float32)


@pytest.mark.interpret
def test_extreme_logits_stay_finite(fused):
    hidden, weight, _, targets = random_head(13, 31, 123, torch.float32, logit_std=1e4, seed=4)
    grads = RowGrads(loss=torch.ones(13), entropy=torch.ones(13))
    expected = reference_head_pass(hidden, weight, None, targets, HeadSpec(), grads)
    result = fused(hidden, weight, None, targets, HeadSpec(), want_entropy=True, grads=grads,
                   need_grad_hidden=True, need_grad_weight=True)
    for name in ("lse", "entropy", "grad_hidden", "grad_weight"):
        assert torch.isfinite(getattr(result, name)).all(), name
    # The logits are fp32 GEMM outputs of size 1e4, each rounded by ~1e-3: the entropy can be no better than a few
    # ulp of the logits (test_entropy_exact_at_large_logits checks the sums on logits exact in fp32).
    logit_size = expected.lse.abs().max().item()
    torch.testing.assert_close(result.entropy.double(), expected.entropy, atol=4 * 2**-24 * logit_size, rtol=0)
    _compare(result._replace(entropy=None), expected, torch.float32)


@pytest.mark.interpret
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(1, 24), hidden_size=st.integers(1, 40), vocab=st.integers(1, 90),
    softcap=st.sampled_from([0.0, 1.5]), smoothing=st.sampled_from([0.0, 0.2]), bias=st.booleans(),
    fields=st.sets(st.sampled_from(["loss", "logprob", "entropy", "lse"]), min_size=1),
)
def test_random_problems_fused_equals_chunked_and_reference(fused, rows, hidden_size, vocab, softcap, smoothing,
                                                            bias, fields):
    from xtf_kernels.ops._triton.backend import ROW_KERNEL
    from xtf_kernels.ops.engine import chunked_head_pass

    spec = HeadSpec(softcap=softcap, label_smoothing=smoothing, z_loss=1e-3)
    hidden, weight, bias_t, targets = random_head(rows, hidden_size, vocab, torch.float32, bias=bias)
    grads = random_row_grads(rows, tuple(sorted(fields)))
    options = dict(want_entropy=True, want_mean_logit=True, grads=grads, need_grad_hidden=True,
                   need_grad_weight=True, need_grad_bias=bias)
    expected = reference_head_pass(hidden, weight, bias_t, targets, spec, grads)
    fused_result = fused(hidden, weight, bias_t, targets, spec, **options)
    chunked_result = chunked_head_pass(ROW_KERNEL, hidden, weight, bias_t, targets, spec,
                                       HeadPassRequest(chunk_size=7, **options))
    _compare(fused_result, expected, torch.float32)
    _compare(chunked_result, expected, torch.float32)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_class_weights_and_argmax_with_every_option(fused, dtype):
    """Per-class weights (torch's weighted, label-smoothed cross-entropy) and the argmax, with every other option
    and every upstream gradient, odd shapes crossing tiles, K steps, H slices and vocabulary splits."""
    hidden, weight, bias, targets = random_head(13, 31, 123, dtype, bias=True, seed=6)
    class_weights = random_class_weights(123)
    targets[0] = 0  # a target whose class weight is 0
    grads = random_row_grads(13)
    expected = reference_head_pass(hidden, weight, bias, targets, ALL_OPTIONS, grads, class_weights)
    result = fused(hidden, weight, bias, targets, ALL_OPTIONS, want_entropy=True, want_mean_logit=True, grads=grads,
                   need_grad_hidden=True, need_grad_weight=True, need_grad_bias=True, want_argmax=True,
                   class_weights=class_weights)
    _compare(result, expected, dtype)
    assert result.argmax.dtype == torch.int64
    assert torch.equal(result.argmax, expected.argmax)


@pytest.mark.interpret
def test_argmax_ties_across_vocabulary_splits(fused_statistics):
    """Equal maxima in different vocabulary ranges (32 columns each here) and tiles: the first index wins."""
    hidden, weight, bias, targets = random_head(13, 31, 123, torch.float32, bias=True, seed=7)
    bias[[5, 100]] = 1e3
    bias[[40, 41]] = 2e3  # a tie inside one tile, above the tie across ranges
    hidden.zero_()  # logits = bias exactly
    bias_rows = bias.clone()
    bias_rows[[40, 41]] = 0.0
    for head_bias, first in ((bias, 40), (bias_rows, 5)):
        stats = fused_statistics(hidden, weight, head_bias, targets, HeadSpec(), want_argmax=True)
        assert stats.argmax.tolist() == [first] * 13


@pytest.mark.interpret
def test_entropy_exact_at_large_logits(fused):
    """Logits 1e4 + O(1), every one exact in fp32 (integer hidden and weight, bias on a 1/8 grid), so float64
    on the same inputs is the exact answer: the shifted sums keep the entropy to O(1) rounding, where an
    unshifted sum p z ~ 1e4 minus lse ~ 1e4 would lose ~1e-3. The backward in the same call takes p and the
    entropy term from the forward's max and sum, so its gradients are exact too (a backward given only the
    fp32 lse, the recomputing one, carries its ~6e-4 rounding into every p)."""
    gen = torch.Generator().manual_seed(8)
    hidden = torch.randint(-2, 3, (13, 31), generator=gen).float()
    weight = torch.randint(-1, 2, (123, 31), generator=gen).float() * 0.25
    bias = 1e4 + torch.randint(-16, 17, (123,), generator=gen).float() / 8
    targets = torch.randint(0, 123, (13,), generator=gen)
    grads = RowGrads(loss=torch.ones(13), entropy=torch.ones(13))
    expected = reference_head_pass(hidden, weight, bias, targets, HeadSpec(), grads)
    result = fused(hidden, weight, bias, targets, HeadSpec(), want_entropy=True, grads=grads, need_grad_hidden=True,
                   need_grad_weight=True)
    assert (expected.entropy > 1).all()
    torch.testing.assert_close(result.entropy.double(), expected.entropy, atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(result.lse.double(), expected.lse, atol=0, rtol=2e-7)
    assert_close(result.grad_hidden, expected.grad_hidden, grad=True, msg="grad_hidden")
    assert_close(result.grad_weight, expected.grad_weight, grad=True, msg="grad_weight")


@pytest.mark.interpret
@pytest.mark.parametrize("spec", [HeadSpec(logit_scale=0.0625), HeadSpec(softcap=3.0, logit_scale=2.5),
                                  HeadSpec(inv_temperature=1 / 0.7, logit_scale=7.0)], ids=str)
def test_logit_scale(fused, spec):
    """A head that multiplies its logits by a constant (Cohere, Granite), alone and with softcap / temperature,
    through the forward, the recomputing backward and the target-logit-only kernel."""
    hidden, weight, bias, targets = random_head(13, 31, 123, torch.float32, bias=True, seed=9)
    grads = random_row_grads(13, ("loss", "logprob", "entropy"))
    expected = reference_head_pass(hidden, weight, bias, targets, spec, grads)
    result = fused(hidden, weight, bias, targets, spec, want_entropy=True, grads=grads, need_grad_hidden=True,
                   need_grad_weight=True, need_grad_bias=True)
    _compare(result, expected, torch.float32)
    recompute = fused(hidden, weight, bias, targets, spec, grads=grads, lse=result.lse, entropy=result.entropy,
                      need_grad_hidden=True)
    _compare(recompute, expected, torch.float32)
