"""token_logprobs (log-prob, entropy, log-sum-exp and their gradients) against the float64 reference."""

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
from tests.reference import reference_logits
from tests.reference import reference_token_logprobs
from tests.reference import reference_token_logprobs_outputs

OPTIONS = {
    "plain": {},
    "bias": {"bias": True},
    "temperature": {"temperature": 0.7},
    "softcap": {"softcap": 2.5},
    "logit_scale": {"logit_scale": 0.45},
    "shift": {"shift": True},
    "all": {"bias": True, "temperature": 1.3, "softcap": 2.5, "logit_scale": 2.2, "ignore_index": 3},
    "all_shift": {"bias": True, "temperature": 1.3, "softcap": 2.5, "logit_scale": 2.2, "ignore_index": 3,
                  "shift": True},
}
OP_KEYS = ("temperature", "softcap", "logit_scale", "shift")


def _run(impl, lead, hidden_size, vocab, dtype, options, *, grad_outputs=("logprobs", "entropy", "lse"), seed=0):
    ignore_index = options.get("ignore_index", -100)
    op_kwargs = {k: v for k, v in options.items() if k in OP_KEYS}
    extras = "argmax" in backend_features(impl.backend)
    case = make_case(lead, hidden_size, vocab, dtype=dtype, device=impl.device, bias=options.get("bias", False),
                     ignore_index=ignore_index, seed=seed)
    out = xk.token_logprobs(case.hidden, case.weight, case.targets, bias=case.bias, ignore_index=ignore_index,
                            return_entropy=True, return_lse=True, return_predicted_tokens=extras,
                            return_mean_logit=extras, backend=impl.backend, **op_kwargs)
    ref_leaves = case.float64_leaves()
    expected = reference_token_logprobs_outputs(ref_leaves[0], ref_leaves[1], case.targets.cpu(),
                                                bias=ref_leaves[2] if case.bias is not None else None,
                                                ignore_index=ignore_index, **op_kwargs)
    shape = expected[0].shape
    for name, got, want in zip(out._fields[:3], out, expected):
        assert got.dtype == accumulation_dtype(dtype) and got.shape == shape
        assert_close(got, want, accumulation_dtype(dtype), msg=name)
    if extras:
        shifted = case.targets.cpu()[..., 1:] if op_kwargs.get("shift") else case.targets.cpu()
        hidden = ref_leaves[0][..., :-1, :] if op_kwargs.get("shift") else ref_leaves[0]
        logits = reference_logits(hidden, ref_leaves[1], ref_leaves[2] if case.bias is not None else None,
                                  op_kwargs.get("softcap"), op_kwargs.get("temperature", 1.0),
                                  op_kwargs.get("logit_scale", 1.0))
        assert_predictions(out.predicted_tokens, logits, shifted != ignore_index, ignore_index)
        assert not out.mean_logit.requires_grad
        assert_close(out.mean_logit, expected[4], accumulation_dtype(dtype), msg="mean_logit")
    # A random upstream gradient on each chosen output, the others unused.
    chosen = [i for i, name in enumerate(out._fields[:3]) if name in grad_outputs]
    upstream = [torch.randn(shape, dtype=torch.float64) for _ in chosen]
    got_grads = torch.autograd.grad([out[i] for i in chosen], case.leaves(),
                                    [g.to(device=impl.device, dtype=out.logprobs.dtype) for g in upstream])
    want_grads = torch.autograd.grad([expected[i] for i in chosen], ref_leaves, upstream)
    for name, got, want in zip(("hidden", "weight", "bias"), got_grads, want_grads):
        assert_close(got, want, dtype, grad=True, msg=f"grad {name}")
    return case, out


def _supported(impl, options):
    """``options`` without a logit scale where ``impl`` does not declare it (its typed error is tested)."""
    if "logit_scale" in backend_features(impl.backend):
        return options
    return {k: v for k, v in options.items() if k != "logit_scale"}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_options_match_reference(impl, dtype, option):
    if dtype not in impl.dtypes:
        pytest.skip(f"{dtype} not tested on {impl}")
    if "logit_scale" in OPTIONS[option] and "logit_scale" not in backend_features(impl.backend):
        pytest.skip(f"{impl} does not declare logit_scale (the typed error is tested)")
    _run(impl, (47,), 31, 123, dtype, OPTIONS[option])


@pytest.mark.parametrize("outputs", [("logprobs",), ("entropy",), ("lse",), ("logprobs", "entropy")])
def test_gradient_through_each_output(impl, outputs):
    _run(impl, (29,), 16, 57, torch.float32, _supported(impl, OPTIONS["all"]), grad_outputs=outputs)


@pytest.mark.parametrize("lead,hidden_size,vocab", [((3, 11), 31, 123), ((1,), 8, 17), ((0,), 8, 17)],
                         ids=["3d", "single", "empty"])
def test_shapes(impl, lead, hidden_size, vocab):
    _run(impl, lead, hidden_size, vocab, torch.float32, {"temperature": 0.9})


def test_plain_return_and_named_fields(impl):
    case = make_case((13,), 8, 17, device=impl.device)
    plain = xk.token_logprobs(case.hidden, case.weight, case.targets, backend=impl.backend)
    assert isinstance(plain, torch.Tensor) and plain.shape == (13,)
    only_lse = xk.token_logprobs(case.hidden, case.weight, case.targets, return_lse=True, backend=impl.backend)
    assert isinstance(only_lse, xk.TokenLogprobs) and only_lse.entropy is None and only_lse.lse.shape == (13,)
    torch.testing.assert_close(only_lse.logprobs, plain)
    assert torch.all(plain[case.targets == -100] == 0)


def test_no_grad_saves_nothing(impl):
    case = make_case((13,), 8, 17, device=impl.device)
    with torch.no_grad():
        out = xk.token_logprobs(case.hidden, case.weight, case.targets, return_entropy=True, backend=impl.backend)
    assert not out.logprobs.requires_grad and out.logprobs.grad_fn is None


def test_logprobs_are_consistent_with_the_loss(impl):
    case = make_case((47,), 31, 123, device=impl.device)
    logprobs = xk.token_logprobs(case.hidden, case.weight, case.targets, backend=impl.backend)
    losses = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, reduction="none", backend=impl.backend)
    torch.testing.assert_close(-logprobs, losses, atol=1e-5, rtol=1e-5)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tokens=st.integers(0, 20), hidden_size=st.integers(1, 16), vocab=st.integers(1, 50),
       temperature=st.floats(0.3, 3.0), softcap=st.one_of(st.none(), st.floats(0.5, 10.0)),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_property_random_problems(impl, tokens, hidden_size, vocab, temperature, softcap, bias, seed):
    options = {"temperature": temperature, "bias": bias}
    if softcap is not None:
        options["softcap"] = softcap
    _run(impl, (tokens,), hidden_size, vocab, torch.float32, options, seed=seed)


def test_vocabulary_masked_by_minus_inf_bias(impl):
    """A -inf bias removes a vocabulary entry: equal to the same head without that row, finite gradients."""
    case = make_case((23,), 16, 41, device=impl.device, bias=True)
    masked = 7
    bias = case.bias.detach().clone()
    bias[masked] = float("-inf")
    targets = torch.where(case.targets == masked, -100, case.targets)
    out = xk.token_logprobs(case.hidden, case.weight, targets, bias=bias, return_entropy=True, return_lse=True,
                            backend=impl.backend)
    keep_rows = torch.arange(41, device=impl.device) != masked
    reduced_targets = torch.where(targets > masked, targets - 1, targets)
    hidden64 = case.hidden.detach().double().requires_grad_()
    weight64 = case.weight.detach().double().requires_grad_()
    expected = reference_token_logprobs(hidden64, weight64[keep_rows], reduced_targets.cpu(), bias=bias[keep_rows],
                                        ignore_index=-100)
    for name, got, want in zip(out._fields, out, expected):
        assert_close(got, want, msg=name)
    upstream = [torch.randn(23, dtype=torch.float64) for _ in range(3)]
    got = torch.autograd.grad(list(out[:3]), [case.hidden, case.weight], [u.float() for u in upstream])
    want = torch.autograd.grad(list(expected), [hidden64, weight64], upstream)
    assert all(torch.isfinite(g).all() for g in got)
    assert_close(got[0], want[0], grad=True, msg="grad hidden")
    assert_close(got[1], want[1], grad=True, msg="grad weight")
