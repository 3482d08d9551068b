"""linear_cross_entropy against the float64 materialised reference, on every backend tier."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import xtf_kernels as xk
from tests.cases import make_case
from tests.helpers import accumulation_dtype
from tests.helpers import assert_close
from tests.helpers import assert_predictions
from tests.helpers import backend_features
from tests.helpers import option_features
from tests.reference import reference_linear_cross_entropy
from tests.reference import reference_linear_cross_entropy_outputs

OPTIONS = {
    "plain": {},
    "bias": {"bias": True},
    "token_weights": {"token_weights": True},
    "class_weights": {"class_weights": True},
    "softcap": {"softcap": 2.5},
    "logit_scale": {"logit_scale": 0.37},
    "label_smoothing": {"label_smoothing": 0.1},
    "z_loss": {"z_loss": 1e-2},
    "shift": {"shift": True},
    "all": {"bias": True, "token_weights": True, "class_weights": True, "softcap": 2.5, "logit_scale": 1.7,
            "label_smoothing": 0.1, "z_loss": 1e-2, "ignore_index": 7},
    "all_shift": {"bias": True, "token_weights": True, "class_weights": True, "softcap": 2.5, "logit_scale": 1.7,
                  "label_smoothing": 0.1, "z_loss": 1e-2, "ignore_index": 7, "shift": True},
}
# Options run with every return_* output too (the others run the plain-tensor path).
WITH_OUTPUTS = ("class_weights", "shift", "all", "all_shift")
REDUCTIONS = ("mean", "sum", "none")
CASE_KEYS = ("bias", "token_weights", "class_weights", "ignore_index")


def check_outputs(out, reference, ignore_index, dtype):
    """z-loss term, token accuracy and predicted tokens of a LinearCrossEntropyOutput against the reference."""
    assert isinstance(out, xk.LinearCrossEntropyOutput)
    assert out.z_loss.shape == out.loss.shape and out.z_loss.dtype == out.loss.dtype
    assert not out.z_loss.requires_grad
    assert_close(out.z_loss, reference.z_loss, accumulation_dtype(dtype), msg="z_loss term")
    kept = reference.kept
    assert_predictions(out.predicted_tokens, reference.logits, kept, ignore_index)
    # Accuracy from the op's own predictions (validated above): correct kept tokens / kept tokens.
    correct = ((out.predicted_tokens.cpu() == reference.targets) & kept).double()
    expected = correct if correct.shape == reference.token_accuracy.shape else correct.sum() / max(kept.sum(), 1)
    assert out.token_accuracy.shape == reference.token_accuracy.shape
    torch.testing.assert_close(out.token_accuracy.double().cpu(), expected, atol=1e-6, rtol=0)


def run_and_compare(impl, lead, hidden_size, vocab, dtype, reduction, options, *, chunk_size=None, seed=0,
                    num_items_in_batch=None, outputs=False):
    """Forward and every gradient of the op against the float64 reference, with a random upstream grad.

    outputs: also ask for every ``return_*`` output and check each against the reference.
    """
    case_kwargs = {k: options[k] for k in CASE_KEYS if k in options}
    op_kwargs = {k: v for k, v in options.items() if k not in CASE_KEYS}
    ignore_index = options.get("ignore_index", -100)
    case = make_case(lead, hidden_size, vocab, dtype=dtype, device=impl.device, seed=seed, **case_kwargs)
    returns = dict(return_z_loss=True, return_token_accuracy=True, return_predicted_tokens=True) if outputs else {}
    out = xk.linear_cross_entropy(
        case.hidden, case.weight, case.targets, bias=case.bias, token_weights=case.token_weights,
        class_weights=case.class_weights, ignore_index=ignore_index, reduction=reduction,
        num_items_in_batch=num_items_in_batch, backend=impl.backend, chunk_size=chunk_size, **op_kwargs, **returns,
    )
    loss = out.loss if outputs else out
    ref_leaves = case.float64_leaves()
    ref_hidden, ref_weight, *ref_bias = ref_leaves
    reference = reference_linear_cross_entropy_outputs(
        ref_hidden, ref_weight, case.targets.cpu(), bias=ref_bias[0] if ref_bias else None,
        token_weights=None if case.token_weights is None else case.token_weights.cpu(),
        class_weights=None if case.class_weights is None else case.class_weights.cpu(), ignore_index=ignore_index,
        reduction=reduction, num_items_in_batch=num_items_in_batch, **op_kwargs,
    )
    expected = reference.loss
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(loss, expected, accumulation_dtype(dtype), msg="loss")
    if outputs:
        check_outputs(out, reference, ignore_index, dtype)
    grad_out = torch.randn(loss.shape, dtype=torch.float64) if reduction == "none" else torch.tensor(1.7).double()
    grads = torch.autograd.grad(loss, case.leaves(), grad_out.to(device=impl.device, dtype=loss.dtype),
                                allow_unused=True)
    expected_grads = torch.autograd.grad(expected, ref_leaves, grad_out, allow_unused=True)
    for name, got, want in zip(("hidden", "weight", "bias"), grads, expected_grads):
        want = torch.zeros_like(ref_leaves[0]) if want is None and name == "hidden" else want
        assert got is not None, f"no gradient for {name}"
        assert got.dtype == dtype
        assert_close(got, want, dtype, grad=True, msg=f"grad {name}")
    return case, loss, grads


def skip_unsupported(impl, options, dtype=torch.float32, outputs=False):
    """Skip when ``impl`` does not declare a feature these options need (tested to raise instead, below)."""
    missing = option_features(options, dtype=dtype, outputs=outputs) - backend_features(impl.backend)
    if missing:
        pytest.skip(f"{impl} does not declare {sorted(missing)} (the typed error is tested)")


def supported(impl, options, outputs=True):
    """``options`` without what ``impl`` does not declare, and whether it can return the argmax outputs."""
    features = backend_features(impl.backend)
    kept = dict(options)
    if "class_weights" not in features:
        kept.pop("class_weights", None)
    if "logit_scale" not in features:
        kept.pop("logit_scale", None)
    return kept, outputs and "argmax" in features


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_options_match_reference(impl, dtype, reduction, option):
    if dtype not in impl.dtypes:
        pytest.skip(f"{dtype} not tested on {impl}")
    outputs = option in WITH_OUTPUTS
    skip_unsupported(impl, OPTIONS[option], dtype, outputs)
    run_and_compare(impl, (47,), 31, 123, dtype, reduction, OPTIONS[option], chunk_size=16, outputs=outputs)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "lead,hidden_size,vocab",
    [((47,), 31, 123), ((3, 11), 31, 123), ((1,), 8, 17), ((0,), 8, 17), ((2, 0, 3), 5, 9), ((64,), 16, 1)],
    ids=["47x31x123", "3d", "single", "empty", "empty-3d", "V=1"],
)
def test_shapes_match_reference(impl, lead, hidden_size, vocab, reduction):
    options, outputs = supported(impl, OPTIONS["all"])
    if vocab <= options["ignore_index"]:
        options["ignore_index"] = -100
    run_and_compare(impl, lead, hidden_size, vocab, torch.float32, reduction, options, outputs=outputs)


@pytest.mark.parametrize("chunk_size", [1, 5, 47, 1000])
def test_chunk_size_does_not_change_result(impl, chunk_size):
    options, _ = supported(impl, OPTIONS["all"])
    _, loss, grads = run_and_compare(impl, (47,), 31, 123, torch.float32, "mean", options, chunk_size=chunk_size)
    _, loss_ref, grads_ref = run_and_compare(impl, (47,), 31, 123, torch.float32, "mean", options)
    torch.testing.assert_close(loss, loss_ref, atol=1e-6, rtol=1e-6)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_noncontiguous_hidden(impl):
    case = make_case((11, 3), 31, 123, device=impl.device)
    hidden_t = case.hidden.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    assert not hidden_t.is_contiguous()
    loss = xk.linear_cross_entropy(hidden_t, case.weight, case.targets, backend=impl.backend)
    expected = reference_linear_cross_entropy(case.hidden.detach(), case.weight.detach(), case.targets.cpu())
    assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, hidden_t)
    assert grad.shape == hidden_t.shape


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("how", ["ignore_index", "zero_weights"])
def test_no_token_kept(impl, reduction, how):
    case = make_case((9,), 8, 17, device=impl.device, token_weights=True)
    targets, weights = case.targets, case.token_weights
    if how == "ignore_index":
        targets = torch.full_like(targets, -100)
    else:
        weights = torch.zeros_like(weights)
    loss = xk.linear_cross_entropy(case.hidden, case.weight, targets, token_weights=weights, reduction=reduction,
                                   backend=impl.backend)
    assert torch.all(loss == 0)
    assert loss.shape == ((9,) if reduction == "none" else ())
    grad_out = torch.randn_like(loss)
    grads = torch.autograd.grad(loss, case.leaves(), grad_out)
    for grad in grads:
        assert torch.all(grad == 0), "gradients must be exactly 0 when no token is kept"


def test_single_kept_token(impl):
    case = make_case((7,), 8, 17, device=impl.device)
    targets = torch.full_like(case.targets, -100)
    targets[3] = 5
    loss = xk.linear_cross_entropy(case.hidden, case.weight, targets, backend=impl.backend)
    expected = reference_linear_cross_entropy(case.hidden.detach(), case.weight.detach(), targets.cpu())
    assert_close(loss, expected)
    (grad_hidden,) = torch.autograd.grad(loss, case.hidden)
    assert torch.all(grad_hidden[torch.arange(7) != 3] == 0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_dropped_tokens_get_exactly_zero_gradient(impl, reduction):
    case = make_case((47,), 31, 123, device=impl.device, token_weights=True)
    loss = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, token_weights=case.token_weights,
                                   reduction=reduction, backend=impl.backend)
    grad_out = torch.randn_like(loss)
    (grad_hidden,) = torch.autograd.grad(loss, case.hidden, grad_out)
    dropped = (case.targets == -100) | (case.token_weights == 0)
    assert dropped.any() and (~dropped).any()
    assert torch.all(grad_hidden[dropped] == 0)
    assert torch.all(grad_hidden[~dropped].abs().sum(-1) > 0)
    if reduction == "none":
        assert torch.all(loss[dropped] == 0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_extreme_logits_stay_finite(impl, reduction):
    case = make_case((13,), 16, 40, device=impl.device, logit_std=1e4, bias=True)
    loss = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, bias=case.bias, reduction=reduction,
                                   backend=impl.backend, z_loss=1e-4, label_smoothing=0.05)
    expected = reference_linear_cross_entropy(
        case.hidden.detach(), case.weight.detach(), case.targets.cpu(), bias=case.bias.detach(),
        reduction=reduction, z_loss=1e-4, label_smoothing=0.05,
    )
    assert torch.isfinite(loss).all()
    assert_close(loss, expected, msg="extreme logits")
    grads = torch.autograd.grad(loss, case.leaves(), torch.ones_like(loss))
    assert all(torch.isfinite(g).all() for g in grads)


def test_gradient_accumulation_with_num_items_in_batch(impl):
    """Two micro-batches normalised by the global token count equal one batch with reduction="mean"."""
    case = make_case((2, 19), 31, 123, device=impl.device, token_weights=False)
    full = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, backend=impl.backend)
    full_grads = torch.autograd.grad(full, case.leaves())
    num_items = int((case.targets != -100).sum())
    total = 0.0
    acc = [torch.zeros_like(x) for x in case.leaves()]
    for micro in range(2):
        hidden = case.hidden.detach()[micro].requires_grad_()
        loss = xk.linear_cross_entropy(hidden, case.weight, case.targets[micro], num_items_in_batch=num_items,
                                       backend=impl.backend)
        g_hidden, g_weight = torch.autograd.grad(loss, (hidden, case.weight))
        acc[0][micro] = g_hidden
        acc[1] += g_weight
        total = total + loss
    torch.testing.assert_close(total, full, atol=1e-6, rtol=1e-5)
    for got, want in zip(acc, full_grads):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("num_items", [5, 5.0, "tensor", 0])
def test_num_items_in_batch_forms(impl, num_items):
    case = make_case((13,), 8, 17, device=impl.device)
    value = torch.tensor(5, device=impl.device) if num_items == "tensor" else num_items
    loss = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, num_items_in_batch=value,
                                   backend=impl.backend)
    total = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, reduction="sum", backend=impl.backend)
    expected = total / 5 if num_items != 0 else torch.zeros(())
    torch.testing.assert_close(loss, expected.to(loss.device), atol=1e-6, rtol=1e-6)


def test_bool_token_weights_equal_ignore_index(impl):
    case = make_case((47,), 31, 123, device=impl.device, ignore_fraction=0.0)
    keep = torch.rand(47) > 0.4
    via_mask = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, token_weights=keep.to(impl.device),
                                       backend=impl.backend)
    ignored = torch.where(keep.to(impl.device), case.targets, -100)
    via_ignore = xk.linear_cross_entropy(case.hidden, case.weight, ignored, backend=impl.backend)
    torch.testing.assert_close(via_mask, via_ignore)


def test_deterministic(impl):
    outs = []
    for _ in range(2):
        case = make_case((47,), 31, 123, device=impl.device, bias=True, token_weights=True)
        loss = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, bias=case.bias,
                                       token_weights=case.token_weights, backend=impl.backend, chunk_size=16)
        outs.append((loss, *torch.autograd.grad(loss, case.leaves())))
    for a, b in zip(*outs):
        assert torch.equal(a, b), "same inputs must give the same bits"


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tokens=st.integers(0, 24),
    hidden_size=st.integers(1, 20),
    vocab=st.integers(1, 60),
    reduction=st.sampled_from(REDUCTIONS),
    ignore_fraction=st.floats(0.0, 1.0),
    use_weights=st.booleans(),
    use_bias=st.booleans(),
    softcap=st.one_of(st.none(), st.floats(0.5, 20.0)),
    label_smoothing=st.sampled_from([0.0, 0.2]),
    z_loss=st.sampled_from([0.0, 1e-3]),
    chunk_size=st.one_of(st.none(), st.integers(1, 9)),
    seed=st.integers(0, 2**16),
)
def test_property_random_problems(impl, tokens, hidden_size, vocab, reduction, ignore_fraction, use_weights,
                                  use_bias, softcap, label_smoothing, z_loss, chunk_size, seed):
    if impl.interpret and tokens * vocab > 400:
        tokens = min(tokens, 400 // vocab)
    case = make_case((tokens,), hidden_size, vocab, device=impl.device, bias=use_bias, token_weights=use_weights,
                     ignore_fraction=ignore_fraction, seed=seed)
    loss = xk.linear_cross_entropy(
        case.hidden, case.weight, case.targets, bias=case.bias, token_weights=case.token_weights,
        reduction=reduction, softcap=softcap, label_smoothing=label_smoothing, z_loss=z_loss, backend=impl.backend,
        chunk_size=chunk_size,
    )
    ref_leaves = case.float64_leaves()
    expected = reference_linear_cross_entropy(
        ref_leaves[0], ref_leaves[1], case.targets.cpu(), bias=ref_leaves[2] if use_bias else None,
        token_weights=None if case.token_weights is None else case.token_weights.cpu(), reduction=reduction,
        softcap=softcap, label_smoothing=label_smoothing, z_loss=z_loss,
    )
    assert_close(loss, expected)
    grad_out = torch.randn(loss.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    got = torch.autograd.grad(loss, case.leaves(), grad_out.float().to(impl.device))
    want = torch.autograd.grad(expected, ref_leaves, grad_out, allow_unused=True)
    for g, w, leaf in zip(got, want, ref_leaves):
        # floor=1: with V = 1 and label smoothing the exact gradient is 0 = g - (1 - eps) g - eps g, and
        # fp32 leaves ~1e-7 of the O(1) terms.
        assert_close(g, torch.zeros_like(leaf) if w is None else w, grad=True, floor=1.0)


def test_module_matches_functional(impl):
    case = make_case((47,), 31, 123, device=impl.device, token_weights=True)
    module = xk.LinearCrossEntropyLoss(z_loss=1e-3, label_smoothing=0.1, backend=impl.backend)
    got = module(case.hidden, case.weight, case.targets, case.token_weights)
    want = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, token_weights=case.token_weights,
                                   z_loss=1e-3, label_smoothing=0.1, backend=impl.backend)
    assert torch.equal(got, want)
    assert "z_loss=0.001" in repr(module)



@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_retained_graph_second_backward(impl, reduction):
    """Two backwards through a retained graph give the same gradients (nothing is scaled twice)."""
    case = make_case((13,), 8, 17, device=impl.device)
    loss = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, reduction=reduction,
                                   backend=impl.backend)
    first = torch.autograd.grad(loss.sum(), case.leaves(), retain_graph=True)
    second = torch.autograd.grad(loss.sum(), case.leaves())
    for a, b in zip(first, second):
        assert torch.equal(a, b)
