"""xtf_kernels/ops/_cuda/backend.py: the chunked head pass and the two-model delta on the GPU, against
float64 references with materialised logits (tests/reference.py) and autograd.

The public ops run this backend through the shared suites (tests/test_functional_*.py, ``impl`` =
cuda-cuda); these tests drive ``head_pass`` / ``influence_delta`` directly, with chunk sizes that split the
rows, every row-gradient input, and 16-bit inputs (where the row kernel writes the rounded gradient).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close
from tests.reference import reference_logits
from xtf_kernels.ops._cuda.backend import head_pass
from xtf_kernels.ops._cuda.backend import influence_delta
from xtf_kernels.ops.spec import HeadSpec
from xtf_kernels.ops.spec import RowGrads

HAS_CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def gpu_test(fn):
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")(fn))


def _head(rows, hidden_size, vocab, dtype, *, seed, bias=True):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    hidden = torch.randn(rows, hidden_size, generator=gen, device="cuda").to(dtype)
    weight = (torch.randn(vocab, hidden_size, generator=gen, device="cuda") / hidden_size**0.5 * 3).to(dtype)
    b = torch.randn(vocab, generator=gen, device="cuda").to(dtype) if bias else None
    targets = torch.randint(vocab, (rows,), generator=gen, device="cuda")
    return hidden, weight, b, targets


def _reference(hidden, weight, bias, targets, spec: HeadSpec, grads: dict[str, torch.Tensor]):
    """float64 per-row statistics and the gradients (hidden, weight[, bias]) of sum_rows sum_outputs g * output."""
    leaves = [x.detach().double().cpu().requires_grad_() for x in (hidden, weight, bias) if x is not None]
    temperature = 1.0 / spec.inv_temperature
    z = reference_logits(*leaves, softcap=spec.softcap or None, temperature=temperature)
    t = targets.cpu()
    lse = torch.logsumexp(z, 1)
    log_p = torch.log_softmax(z, 1)
    entropy = -(log_p.exp() * log_p).sum(1)
    target_logit = z.gather(1, t[:, None]).squeeze(1)
    loss = F.cross_entropy(z, t, reduction="none", label_smoothing=spec.label_smoothing) + spec.z_loss * lse**2
    outputs = {"loss": loss, "logprob": target_logit - lse, "entropy": entropy, "lse": lse}
    total = sum((g.double().cpu() * outputs[name]).sum() for name, g in grads.items())
    return {
        "lse": lse.detach(), "target_logit": target_logit.detach(), "mean_logit": z.mean(1).detach(),
        "entropy": entropy.detach(), "grads": torch.autograd.grad(total, leaves),
    }


SPECS = {
    "plain": HeadSpec(),
    "all": HeadSpec(softcap=3.0, inv_temperature=1 / 0.8, label_smoothing=0.1, z_loss=1e-3),
}


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("chunk_size", [None, 16])
def test_loss_pass_matches_reference(dtype, spec_name, chunk_size):
    spec = SPECS[spec_name]
    hidden, weight, bias, targets = _head(47, 31, 123, dtype, seed=1)
    g_loss = torch.rand(47, device="cuda")
    result = head_pass(
        hidden, weight, bias, targets, spec, want_entropy=True, want_mean_logit=True, grads=RowGrads(loss=g_loss),
        need_grad_hidden=True, need_grad_weight=True, need_grad_bias=True, chunk_size=chunk_size,
    )
    ref = _reference(hidden, weight, bias, targets, spec, {"loss": g_loss})
    for name in ("lse", "target_logit", "mean_logit", "entropy"):
        assert_close(getattr(result, name), ref[name], dtype, msg=f"{name} {dtype} {spec_name}")
    assert result.grad_hidden.dtype == dtype and result.grad_weight.dtype == torch.float32
    for name, got, expected in zip(("hidden", "weight", "bias"), result[4:], ref["grads"]):
        assert_close(got, expected, dtype, grad=True, msg=f"d {name} {dtype} {spec_name} chunk={chunk_size}")


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("chunk_size", [None, 10])
def test_recompute_pass_with_every_row_gradient(dtype, chunk_size):
    """The token_logprobs backward: lse and entropy from the forward, gradients of logprob, entropy and lse."""
    spec = HeadSpec(softcap=5.0, inv_temperature=1 / 1.2)
    hidden, weight, bias, targets = _head(29, 16, 57, dtype, seed=2)
    gen = torch.Generator(device="cuda").manual_seed(3)
    grads = {name: torch.randn(29, generator=gen, device="cuda") for name in ("logprob", "entropy", "lse")}
    ref = _reference(hidden, weight, bias, targets, spec, grads)
    result = head_pass(
        hidden, weight, bias, targets, spec, grads=RowGrads(**grads), lse=ref["lse"].float().cuda(),
        entropy=ref["entropy"].float().cuda(), need_grad_hidden=True, need_grad_weight=True, need_grad_bias=True,
        chunk_size=chunk_size,
    )
    assert_close(result.target_logit, ref["target_logit"], dtype, msg="target logit")
    for name, got, expected in zip(("hidden", "weight", "bias"), result[4:], ref["grads"]):
        assert_close(got, expected, dtype, grad=True, msg=f"d {name} {dtype}")


@gpu_test
def test_frozen_weight_forms_no_weight_gradient():
    hidden, weight, _, targets = _head(47, 31, 123, torch.bfloat16, seed=4, bias=False)
    result = head_pass(hidden, weight, None, targets, HeadSpec(), grads=RowGrads(loss=torch.ones(47, device="cuda")),
                       need_grad_hidden=True)
    ref = _reference(hidden, weight, None, targets, HeadSpec(), {"loss": torch.ones(47, device="cuda")})
    assert result.grad_weight is None and result.grad_bias is None
    assert_close(result.grad_hidden, ref["grads"][0], torch.bfloat16, grad=True, msg="d hidden")


def _reference_logprob(hidden, weight, bias, targets, spec):
    z = reference_logits(hidden.double().cpu(), weight.double().cpu(), None if bias is None else bias.double().cpu(),
                         softcap=spec.softcap or None, temperature=1.0 / spec.inv_temperature)
    return torch.log_softmax(z, 1).gather(1, targets.cpu()[:, None]).squeeze(1)


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spec", [HeadSpec(), HeadSpec(softcap=3.0, inv_temperature=1 / 0.8)], ids=["plain", "capped"])
@pytest.mark.parametrize("chunk_size", [None, 10])
def test_influence_delta_matches_reference(dtype, spec, chunk_size):
    base_hidden, base_weight, base_bias, targets = _head(47, 31, 123, dtype, seed=5)
    ref_hidden, ref_weight, ref_bias, _ = _head(47, 17, 123, dtype, seed=6)
    delta = influence_delta((base_hidden, base_weight, base_bias), (ref_hidden, ref_weight, ref_bias), targets, spec,
                            chunk_size=chunk_size)
    expected = (_reference_logprob(ref_hidden, ref_weight, ref_bias, targets, spec)
                - _reference_logprob(base_hidden, base_weight, base_bias, targets, spec))
    assert delta.dtype == torch.float32 and delta.shape == (47,)
    assert_close(delta, expected, dtype, msg=f"delta {dtype}")


@gpu_test
def test_influence_delta_of_a_model_with_itself_is_zero():
    hidden, weight, bias, targets = _head(64, 32, 40003, torch.float32, seed=7)  # large V: split rows
    delta = influence_delta((hidden, weight, bias), (hidden, weight, bias), targets, HeadSpec(), chunk_size=3)
    assert torch.all(delta == 0)


@gpu_test
def test_influence_delta_without_rows():
    hidden, weight, bias, targets = _head(0, 8, 11, torch.float32, seed=8)
    assert influence_delta((hidden, weight, bias), (hidden, weight, None), targets, HeadSpec()).shape == (0,)


EVERY_OPTION = HeadSpec(softcap=3.0, inv_temperature=1 / 0.8, label_smoothing=0.1, z_loss=1e-3, logit_scale=0.6)


def _class_weights(vocab, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    weights = torch.rand(vocab, generator=gen, device="cuda") * 1.75 + 0.25
    weights[::7] = 0.0
    return weights


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,vocab,chunk_size", [(47, 123, 16), (5, 50001, None)], ids=["chunks", "split-rows"])
def test_every_new_option_matches_reference(dtype, rows, vocab, chunk_size):
    """Logit scale, class weights (with label smoothing and z-loss) and the argmax, every upstream gradient."""
    from tests.ops._triton.head_reference import reference_head_pass

    hidden, weight, bias, targets = _head(rows, 31, vocab, dtype, seed=9)
    weights = _class_weights(vocab, seed=9)
    gen = torch.Generator(device="cuda").manual_seed(10)
    grads = RowGrads(*(torch.randn(rows, generator=gen, device="cuda") for _ in range(4)))
    result = head_pass(hidden, weight, bias, targets, EVERY_OPTION, want_entropy=True, want_mean_logit=True,
                       want_argmax=True, class_weights=weights, grads=grads, need_grad_hidden=True,
                       need_grad_weight=True, need_grad_bias=True, chunk_size=chunk_size)
    expected = reference_head_pass(hidden, weight, bias, targets, EVERY_OPTION, grads, weights)
    for name in ("lse", "target_logit", "mean_logit", "entropy"):
        assert_close(getattr(result, name), getattr(expected, name), dtype, msg=name)
    for name in ("grad_hidden", "grad_weight", "grad_bias"):
        assert_close(getattr(result, name), getattr(expected, name), dtype, grad=True, msg=name)
    if dtype == torch.float32:  # 16-bit inputs may tie or swap near-equal logits
        assert torch.equal(result.argmax.cpu(), expected.argmax.cpu())


@gpu_test
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_bitwise_repeatable_after_nan_filled_allocator(dtype):
    """Two runs with every option, the caching allocator's free blocks filled with NaN in between: equal bit for
    bit (a buffer read before it is written, or an order that depends on anything but the shape, shows)."""
    hidden, weight, bias, targets = _head(700, 256, 20011, dtype, seed=11)
    weights = _class_weights(20011, seed=11)
    gen = torch.Generator(device="cuda").manual_seed(12)
    grads = RowGrads(*(torch.randn(700, generator=gen, device="cuda") for _ in range(4)))
    options = dict(want_entropy=True, want_mean_logit=True, want_argmax=True, class_weights=weights, grads=grads,
                   need_grad_hidden=True, need_grad_weight=True, need_grad_bias=True, chunk_size=256)
    first = head_pass(hidden, weight, bias, targets, EVERY_OPTION, **options)
    torch.cuda.synchronize()
    blob = torch.full((2**28,), float("nan"), device="cuda")  # 1 GiB, returned to the cache below
    del blob
    second = head_pass(hidden, weight, bias, targets, EVERY_OPTION, **options)
    for name, a, b in zip(first._fields, first, second):
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), f"{name} differs between two runs"
    deltas = [influence_delta((hidden, weight, bias), (hidden[:, :64].contiguous(), weight[:, :64].contiguous(), None),
                              targets, EVERY_OPTION, chunk_size=256) for _ in range(2)]
    assert torch.equal(*deltas)
