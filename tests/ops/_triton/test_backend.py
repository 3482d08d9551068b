"""The Triton backend: path selection (XTF_TRITON_PATH, the "auto" rule), the public ops through the fused
path, and the GPU checks (bf16, the Llama-3 head, N * V > 2^31, bitwise determinism)."""

from __future__ import annotations

import pytest
import torch

import xtf_kernels as xk
from tests.cases import make_case
from tests.helpers import assert_close
from tests.ops._triton.head_reference import random_head
from tests.ops._triton.head_reference import random_row_grads
from tests.ops._triton.head_reference import reference_head_pass
from tests.reference import reference_linear_cross_entropy
from tests.reference import reference_token_logprobs
from xtf_kernels.ops.spec import HeadSpec
from xtf_kernels.ops.spec import RowGrads

backend = pytest.importorskip("xtf_kernels.ops._triton.backend")

ALL_OPTIONS = HeadSpec(softcap=2.5, inv_temperature=1 / 0.7, label_smoothing=0.1, z_loss=1e-2)


# --------------------------------------------------------------------------------------------------
# path selection (pure host logic: cpu tier)
# --------------------------------------------------------------------------------------------------


def _select(rows, chunk_size=None):
    return backend.select_path(rows=rows, chunk_size=chunk_size)


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("XTF_TRITON_PATH", "XTF_CHUNK_SIZE", "XTF_CHUNK_MEMORY_MB"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("value,expected", [("fused", "fused"), ("CHUNKED", "chunked"), (" auto ", "auto"),
                                            ("", "auto")])
def test_path_flag(clean_env, value, expected):
    clean_env.setenv("XTF_TRITON_PATH", value)
    assert backend.requested_path() == expected


def test_bad_path_flag_names_the_variable(clean_env):
    clean_env.setenv("XTF_TRITON_PATH", "fastest")
    with pytest.raises(ValueError, match="XTF_TRITON_PATH"):
        backend.requested_path()


def test_forced_paths_override_the_rule(clean_env):
    clean_env.setenv("XTF_TRITON_PATH", "chunked")
    assert _select(1) == "chunked"
    clean_env.setenv("XTF_TRITON_PATH", "fused")
    assert _select(4096, chunk_size=64) == "fused"


def test_auto_is_fused_below_256_rows_and_chunked_from_there(clean_env):
    assert backend.FUSED_MAX_ROWS == 256
    assert [_select(rows) for rows in (0, 1, 255)] == ["fused"] * 3
    assert [_select(rows) for rows in (256, 4096, 16384)] == ["chunked"] * 3


@pytest.mark.parametrize("budget_mb", ["1", "64", "100000"])
def test_auto_never_depends_on_the_memory_budget(clean_env, budget_mb):
    """Memory pressure may fail an allocation; it never changes the path (nor the summation order)."""
    clean_env.setenv("XTF_CHUNK_MEMORY_MB", budget_mb)
    assert _select(100) == "fused"
    assert _select(4096) == "chunked"


def test_fixed_chunk_size_selects_chunked(clean_env):
    assert _select(100, chunk_size=32) == "chunked"
    clean_env.setenv("XTF_CHUNK_SIZE", "512")
    assert _select(100) == "chunked"


def test_features_declared():
    assert backend.features == {"logit_scale", "class_weights", "argmax"}


# --------------------------------------------------------------------------------------------------
# the public ops through the fused path (interpreter)
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def fused_path(triton_interpret, clean_env):
    clean_env.setenv("XTF_TRITON_PATH", "fused")


@pytest.mark.interpret
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_linear_cross_entropy_fused(fused_path, dtype, reduction):
    options = dict(softcap=2.5, label_smoothing=0.1, z_loss=1e-2, ignore_index=7)
    case = make_case((19,), 31, 123, dtype=dtype, bias=True, token_weights=True, ignore_index=7)
    loss = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, bias=case.bias,
                                   token_weights=case.token_weights, reduction=reduction, backend="triton", **options)
    leaves = case.float64_leaves()
    expected = reference_linear_cross_entropy(leaves[0], leaves[1], case.targets, bias=leaves[2],
                                              token_weights=case.token_weights, reduction=reduction, **options)
    assert_close(loss, expected, dtype, msg="loss")
    grad_out = torch.randn(loss.shape, dtype=torch.float64)
    grads = torch.autograd.grad(loss, case.leaves(), grad_out.float())
    expected_grads = torch.autograd.grad(expected, leaves, grad_out)
    for name, got, want in zip(("hidden", "weight", "bias"), grads, expected_grads):
        assert_close(got, want, dtype, grad=True, msg=f"grad {name}")


@pytest.mark.interpret
def test_token_logprobs_fused_gradients_through_every_output(fused_path):
    case = make_case((3, 5), 31, 123, bias=True)
    out = xk.token_logprobs(case.hidden, case.weight, case.targets, bias=case.bias, temperature=0.7, softcap=2.5,
                            return_entropy=True, return_lse=True, backend="triton")
    leaves = case.float64_leaves()
    expected = reference_token_logprobs(leaves[0], leaves[1], case.targets, bias=leaves[2], temperature=0.7,
                                        softcap=2.5)
    upstream = [torch.randn(case.targets.shape, dtype=torch.float64) for _ in range(3)]
    for name, got, want in zip(("logprobs", "entropy", "lse"), out, expected):
        assert_close(got, want, msg=name)
    grads = torch.autograd.grad(out[:3], case.leaves(), [g.float() for g in upstream])
    expected_grads = torch.autograd.grad(expected, leaves, upstream)
    for name, got, want in zip(("hidden", "weight", "bias"), grads, expected_grads):
        assert_close(got, want, grad=True, msg=f"grad {name}")


@pytest.mark.interpret
def test_influence_delta_fused(fused_path):
    base = make_case((17,), 31, 123, bias=True, seed=1, requires_grad=False)
    ref = make_case((17,), 20, 123, seed=2, requires_grad=False)
    delta = xk.influence_delta((base.hidden, base.weight, base.bias), (ref.hidden, ref.weight), base.targets,
                               softcap=2.5, temperature=0.7, backend="triton")
    kw = dict(softcap=2.5, temperature=0.7)
    expected = (reference_token_logprobs(ref.hidden, ref.weight, base.targets, **kw)[0]
                - reference_token_logprobs(base.hidden, base.weight, base.targets, bias=base.bias, **kw)[0])
    assert_close(delta, expected)


# --------------------------------------------------------------------------------------------------
# GPU checks
# --------------------------------------------------------------------------------------------------


def _head_pass_all(path, hidden, weight, bias, targets, spec, grads, monkeypatch, **kwargs):
    monkeypatch.setenv("XTF_TRITON_PATH", path)
    return backend.head_pass(hidden, weight, bias, targets, spec, want_entropy=True, want_mean_logit=True,
                             grads=grads, need_grad_hidden=True, need_grad_weight=True,
                             need_grad_bias=bias is not None, **kwargs)


def _compare(result, expected, dtype, rows=slice(None)):
    for name in ("lse", "target_logit", "mean_logit", "entropy"):
        assert_close(getattr(result, name)[rows], getattr(expected, name), dtype, msg=name)
    assert_close(result.grad_hidden[rows], expected.grad_hidden, dtype, grad=True, msg="grad_hidden")


def _on_cuda(*tensors):
    return [None if t is None else t.cuda() for t in tensors]


def _cuda_grads(rows, fields=("loss", "logprob", "entropy", "lse")):
    return RowGrads(*_on_cuda(*random_row_grads(rows, fields)))


@pytest.mark.cuda
@pytest.mark.parametrize("path", ["fused", "chunked"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_cuda_every_option_matches_reference(triton_cuda, clean_env, path, dtype):
    hidden, weight, bias, targets = _on_cuda(*random_head(300, 256, 5003, dtype, bias=True))
    grads = _cuda_grads(300)
    expected = reference_head_pass(hidden, weight, bias, targets, ALL_OPTIONS, grads)
    result = _head_pass_all(path, hidden, weight, bias, targets, ALL_OPTIONS, grads, clean_env)
    _compare(result, expected, dtype)
    assert_close(result.grad_weight, expected.grad_weight, dtype, grad=True, msg="grad_weight")
    assert_close(result.grad_bias, expected.grad_bias, dtype, grad=True, msg="grad_bias")


@pytest.mark.cuda
@pytest.mark.parametrize("path", ["fused", "chunked"])
def test_cuda_llama3_head(triton_cuda, clean_env, path):
    """H 4096, V 128256, bf16: statistics and every gradient against float64 (2048 rows)."""
    hidden, weight, _, targets = _on_cuda(*random_head(2048, 4096, 128256, torch.bfloat16))
    grads = _cuda_grads(2048, ("loss",))
    expected = reference_head_pass(hidden, weight, None, targets, HeadSpec(), grads)
    result = _head_pass_all(path, hidden, weight, None, targets, HeadSpec(), grads, clean_env)
    _compare(result, expected, torch.bfloat16)
    assert_close(result.grad_weight, expected.grad_weight, torch.bfloat16, grad=True, msg="grad_weight")


@pytest.mark.cuda
def test_cuda_chunk_over_2_31_logits(triton_cuda, clean_env):
    """One chunk of 16800 x 128256 logits (2.15e9 > 2^31 elements): the rows past 2^31 against float64."""
    rows, vocab = 16800, 128256
    hidden, weight, _, targets = _on_cuda(*random_head(rows, 64, vocab, torch.bfloat16, seed=5))
    grads = _cuda_grads(rows, ("loss", "entropy"))
    result = _head_pass_all("chunked", hidden, weight, None, targets, ALL_OPTIONS, grads, clean_env, chunk_size=rows)
    tail = slice(rows - 64, rows)
    assert tail.start * vocab > 2**31
    expected = reference_head_pass(hidden[tail], weight, None, targets[tail], ALL_OPTIONS, grads.index(tail))
    _compare(result, expected, torch.bfloat16, rows=tail)


@pytest.mark.cuda
@pytest.mark.parametrize("path", ["fused", "chunked"])
def test_cuda_bitwise_deterministic(triton_cuda, clean_env, path):
    hidden, weight, bias, targets = _on_cuda(*random_head(2048, 1024, 32000, torch.bfloat16, bias=True, seed=6))
    grads = _cuda_grads(2048)
    first = _head_pass_all(path, hidden, weight, bias, targets, ALL_OPTIONS, grads, clean_env)
    second = _head_pass_all(path, hidden, weight, bias, targets, ALL_OPTIONS, grads, clean_env)
    for name, a, b in zip(first._fields, first, second):
        assert (a is None) == (b is None), name
        assert a is None or torch.equal(a, b), f"{name} differs between two runs"
    base = (hidden, weight, bias)
    ref = (hidden[:, :512].contiguous(), weight[:, :512].contiguous(), None)
    clean_env.setenv("XTF_TRITON_PATH", path)
    deltas = [backend.influence_delta(base, ref, targets, ALL_OPTIONS) for _ in range(2)]
    assert torch.equal(*deltas)


@pytest.mark.interpret
@pytest.mark.parametrize("path", ["fused", "chunked"])
def test_16_bit_inputs_keep_fp32_statistics(triton_interpret, clean_env, path):
    """fp16 hidden and weight (H 256): logits, log-sum-exp, target logit and entropy to fp32-level error
    against float64 on the same fp16 values (about 1e-6 here), not fp16-level (~1e-3 if the logits were
    accumulated or rounded in 16 bits before the row math)."""
    clean_env.setenv("XTF_TRITON_PATH", path)
    hidden, weight, bias, targets = random_head(40, 256, 300, torch.float16, bias=True, seed=14)
    expected = reference_head_pass(hidden, weight, bias, targets, HeadSpec())
    result = backend.head_pass(hidden, weight, bias, targets, HeadSpec(), want_entropy=True,
                               chunk_size=16 if path == "chunked" else None)
    for name in ("lse", "target_logit", "entropy"):
        torch.testing.assert_close(getattr(result, name).double(), getattr(expected, name), atol=1e-5, rtol=0,
                                   msg=lambda m, name=name: f"{name}: {m}")
