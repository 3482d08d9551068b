"""influence_delta against two float64 reference log-prob computations."""

from __future__ import annotations

import pytest
import torch

import xtf_kernels as xk
from tests.cases import make_case
from tests.helpers import assert_close
from tests.reference import reference_token_logprobs


def _pair(impl, lead, vocab, dtype, *, bias=False):
    base = make_case(lead, 31, vocab, dtype=dtype, device=impl.device, bias=bias, seed=1)
    ref = make_case(lead, 19, vocab, dtype=dtype, device=impl.device, bias=bias, seed=2)
    return base, ref, base.targets


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("temperature,softcap", [(1.0, None), (0.8, 3.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_matches_reference(impl, dtype, temperature, softcap, bias):
    if dtype not in impl.dtypes:
        pytest.skip(f"{dtype} not tested on {impl}")
    base, ref, targets = _pair(impl, (47,), 123, dtype, bias=bias)
    delta = xk.influence_delta(
        (base.hidden, base.weight, base.bias) if bias else (base.hidden, base.weight),
        (ref.hidden, ref.weight, ref.bias) if bias else (ref.hidden, ref.weight),
        targets, temperature=temperature, softcap=softcap, backend=impl.backend,
    )
    kw = dict(temperature=temperature, softcap=softcap)
    lp_base = reference_token_logprobs(base.hidden, base.weight, targets.cpu(), bias=base.bias, **kw)[0]
    lp_ref = reference_token_logprobs(ref.hidden, ref.weight, targets.cpu(), bias=ref.bias, **kw)[0]
    assert delta.dtype == torch.float32 and delta.shape == targets.shape
    assert not delta.requires_grad
    assert_close(delta, lp_ref - lp_base, dtype)
    assert torch.all(delta[targets == -100] == 0)


@pytest.mark.parametrize("lead", [(3, 7), (0,), (1,)], ids=["3d", "empty", "single"])
def test_shapes(impl, lead):
    base, ref, targets = _pair(impl, lead, 40, torch.float32)
    delta = xk.influence_delta((base.hidden, base.weight), (ref.hidden, ref.weight), targets, backend=impl.backend)
    expected = (reference_token_logprobs(ref.hidden, ref.weight, targets.cpu())[0]
                - reference_token_logprobs(base.hidden, base.weight, targets.cpu())[0])
    assert_close(delta, expected)


def test_same_model_gives_zero(impl):
    base, _, targets = _pair(impl, (13,), 40, torch.float32)
    delta = xk.influence_delta((base.hidden, base.weight), (base.hidden, base.weight), targets, backend=impl.backend)
    assert torch.all(delta == 0)


def test_equals_difference_of_token_logprobs(impl):
    base, ref, targets = _pair(impl, (47,), 123, torch.float32)
    delta = xk.influence_delta((base.hidden, base.weight), (ref.hidden, ref.weight), targets, backend=impl.backend)
    with torch.no_grad():
        lp_base = xk.token_logprobs(base.hidden, base.weight, targets, backend=impl.backend)
        lp_ref = xk.token_logprobs(ref.hidden, ref.weight, targets, backend=impl.backend)
    torch.testing.assert_close(delta, lp_ref - lp_base, atol=1e-5, rtol=1e-5)
