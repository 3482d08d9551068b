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
from tests.ops._triton.head_reference import random_head
from tests.ops._triton.head_reference import random_row_grads
from tests.ops._triton.head_reference import reference_head_pass
from xtf_kernels.ops.spec import HeadSpec
from xtf_kernels.ops.spec import RowGrads

ALL_OPTIONS = HeadSpec(softcap=2.5, inv_temperature=1 / 0.7, label_smoothing=0.1, z_loss=1e-2)
STAT_NAMES = ("lse", "target_logit", "mean_logit", "entropy")
GRAD_NAMES = ("grad_hidden", "grad_weight", "grad_bias")


@pytest.fixture(scope="module")
def fused(triton_interpret):
    from xtf_kernels.ops._triton.fused import fused_head_pass

    return fused_head_pass


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
    # entropy = lse - sum p z cancels logits of size 1e4: fp32 leaves an error of a few ulp of the logits.
    logit_scale = expected.lse.abs().max().item()
    torch.testing.assert_close(result.entropy.double(), expected.entropy, atol=4 * 2**-24 * logit_scale, rtol=0)
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
    chunked_result = chunked_head_pass(ROW_KERNEL, hidden, weight, bias_t, targets, spec, chunk_size=7, **options)
    _compare(fused_result, expected, torch.float32)
    _compare(chunked_result, expected, torch.float32)
