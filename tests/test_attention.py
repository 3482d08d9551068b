"""attention_received against the eager float64 softmax(q k^T) map, column-averaged, on every backend tier."""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import xtf_kernels as xk
from tests.helpers import assert_close
from xtf_kernels.errors import BackendUnavailableError

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()

BACKENDS = [
    pytest.param(("torch", "cpu"), marks=pytest.mark.cpu, id="torch-cpu"),
    pytest.param(("triton", "cpu"), marks=pytest.mark.interpret, id="triton-interpret"),
    pytest.param(("torch", "cuda"), marks=pytest.mark.cuda, id="torch-cuda"),
    pytest.param(("triton", "cuda"), marks=pytest.mark.cuda, id="triton-cuda"),
]


@pytest.fixture(params=BACKENDS)
def where(request):
    backend, device = request.param
    if backend == "triton" and device == "cpu" and not INTERPRET:
        pytest.skip("Triton interpreter tier: run with TRITON_INTERPRET=1")
    if device == "cuda" and not HAS_CUDA:
        pytest.skip("no CUDA device")
    return backend, device


def dtypes_for(backend, device):
    """The interpreter has no bf16 arithmetic (its bf16 tl.dot is wrong), so it is tested in fp32 / fp16."""
    if backend == "triton" and device == "cpu":
        return (torch.float32, torch.float16)
    return (torch.float32, torch.bfloat16, torch.float16)


def reference_attention_received(q, k, *, causal=True, scale=None, attention_mask=None, reduction="mean"):
    """(B, Hq, L) float64 from the materialised map: softmax over the visible keys, then per key the sum
    (or mean) over the non-padding query rows that see it."""
    batch, heads_q, length, dim = q.shape
    keys = k.double().repeat_interleave(heads_q // k.shape[1], dim=1)
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    scores = q.double() @ keys.transpose(-1, -2) * scale
    device = q.device
    real = torch.ones(batch, length, dtype=torch.bool, device=device) if attention_mask is None else attention_mask != 0
    sees = torch.ones(length, length, dtype=torch.bool, device=device)
    if causal:
        sees = torch.tril(sees)
    sees = sees[None, None] & real[:, None, None, :] & real[:, None, :, None]  # [b, 1, i, j]
    probs = torch.softmax(scores.masked_fill(~sees, -math.inf), dim=-1).nan_to_num(0.0)
    sums = (probs * sees).sum(-2)
    if reduction == "sum":
        return sums.cpu()
    return (sums / sees.sum(-2).clamp(min=1)).cpu()


def make_qk(batch, heads_q, heads_k, length, dim, dtype, device, seed=0, spread=2.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads_q, length, dim, generator=gen) * spread / dim**0.25
    k = torch.randn(batch, heads_k, length, dim, generator=gen) * spread / dim**0.25
    return q.to(device=device, dtype=dtype), k.to(device=device, dtype=dtype)


def padding_mask(batch, length, kind, device):
    """None, left padding (sample b starts at 3 b + 2), right padding, or holes (an int mask)."""
    if kind == "none":
        return None
    positions = torch.arange(length)[None, :]
    starts = torch.arange(batch)[:, None]
    if kind == "left":
        mask = positions >= 3 * starts + 2
    elif kind == "right":
        mask = positions < length - 3 * starts - 1
    else:
        mask = torch.rand(batch, length, generator=torch.Generator().manual_seed(3)) > 0.3
        mask[:, 0] = True
        return mask.long().to(device)
    return mask.to(device)


SHAPES = {
    "gqa-37x24": (2, 4, 2, 37, 24),
    "mha-odd": (1, 3, 3, 29, 7),
    "mqa-d80": (2, 3, 1, 33, 80),
    "L=1": (1, 2, 1, 1, 8),
}


@pytest.mark.parametrize("mask_kind", ["none", "left", "right", "holes"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_matches_reference(where, shape, causal, mask_kind):
    backend, device = where
    batch, heads_q, heads_k, length, dim = SHAPES[shape]
    mask = padding_mask(batch, length, mask_kind, device)
    dtypes = dtypes_for(backend, device)
    if backend == "triton" and device == "cpu" and mask_kind in ("right", "holes"):
        dtypes = dtypes[:1]  # the interpreter runs one program at a time: fp16 is covered by the other masks
    for dtype in dtypes:
        q, k = make_qk(batch, heads_q, heads_k, length, dim, dtype, device)
        got = xk.attention_received(q, k, causal=causal, attention_mask=mask, backend=backend)
        assert got.dtype == torch.float32 and got.shape == (batch, heads_q, length)
        expected = reference_attention_received(q, k, causal=causal, attention_mask=mask)
        assert_close(got, expected, dtype, msg=f"{shape} {dtype}")
        if mask is not None:
            assert (got.cpu()[(mask.cpu() == 0)[:, None, :].expand_as(got)] == 0).all(), "padding keys receive 0"


def test_every_option_at_once(where):
    """Non-contiguous q / k (a (B, L, H, d) layout transposed), GQA, int mask, explicit scale, sum."""
    backend, device = where
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(2, 41, 6, 20, generator=gen).to(device).transpose(1, 2)
    k = torch.randn(2, 41, 2, 20, generator=gen).to(device).transpose(1, 2)
    mask = padding_mask(2, 41, "left", device).to(torch.int32)
    for reduction in ("sum", "mean"):
        got = xk.attention_received(q, k, causal=True, scale=0.3, attention_mask=mask, backend=backend,
                                    reduction=reduction)
        expected = reference_attention_received(q, k, causal=True, scale=0.3, attention_mask=mask,
                                                reduction=reduction)
        assert_close(got, expected, msg=reduction)


def test_float64_inputs(where):
    backend, device = where
    q, k = make_qk(1, 2, 2, 19, 12, torch.float64, device)
    got = xk.attention_received(q, k, backend=backend)
    assert got.dtype == torch.float32
    assert_close(got, reference_attention_received(q, k))


def test_sharp_attention_is_stable(where):
    """Large logits (|s| ~ 100): the log-sum-exp pass keeps probabilities finite and exact."""
    backend, device = where
    q, k = make_qk(1, 2, 1, 23, 16, torch.float32, device, spread=12.0)
    got = xk.attention_received(q, k, backend=backend)
    assert torch.isfinite(got).all()
    assert_close(got, reference_attention_received(q, k))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(length=st.integers(1, 40), dim=st.integers(1, 33), group=st.sampled_from([1, 2, 3]), causal=st.booleans(),
       seed=st.integers(0, 1000))
def test_each_valid_query_row_sums_to_one(length, dim, group, causal, seed):
    """sum over keys of the column sums = number of non-padding queries (each softmax row sums to 1)."""
    q, k = make_qk(2, 2 * group, 2, length, dim, torch.float32, "cpu", seed=seed)
    mask = torch.rand(2, length, generator=torch.Generator().manual_seed(seed)) > 0.3
    sums = xk.attention_received(q, k, causal=causal, attention_mask=mask, backend="torch", reduction="sum")
    expected = mask.sum(-1, keepdim=True).float().expand(2, 2 * group)
    torch.testing.assert_close(sums.sum(-1), expected, atol=1e-4, rtol=1e-5)
    assert_close(sums, reference_attention_received(q, k, causal=causal, attention_mask=mask, reduction="sum"))


def test_causal_denominator_is_later_query_count():
    """Without padding, the last key is seen only by the last query: its mean is that query's weight."""
    q, k = make_qk(1, 1, 1, 6, 4, torch.float32, "cpu")
    scores = (q[0, 0] @ k[0, 0].T).double() / 2.0
    last_row = torch.softmax(scores[-1], -1)
    got = xk.attention_received(q, k, backend="torch")
    assert math.isclose(got[0, 0, -1].item(), last_row[-1].item(), rel_tol=1e-6)
    # key 0 is seen by all 6 queries; query 0 sees only key 0 (probability 1)
    first_col = torch.stack([torch.softmax(scores[i, : i + 1], -1)[0] for i in range(6)])
    assert math.isclose(got[0, 0, 0].item(), first_col.mean().item(), rel_tol=1e-6)


def test_empty_sequence():
    q, k = make_qk(2, 2, 1, 0, 8, torch.float32, "cpu")
    assert xk.attention_received(q, k).shape == (2, 2, 0)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(q=torch.randn(1, 2, 5)), ValueError, "q must be 4-D"),
        (dict(k=torch.randn(1, 3, 5, 8)), ValueError, "multiple of k heads"),
        (dict(k=torch.randn(1, 1, 6, 8)), ValueError, "must share batch, L and d"),
        (dict(k=torch.randn(1, 1, 5, 8, dtype=torch.float16)), TypeError, "same dtype"),
        (dict(q=torch.randint(0, 3, (1, 2, 5, 8))), TypeError, "q must be float32"),
        (dict(attention_mask=torch.ones(1, 4, dtype=torch.bool)), ValueError, "attention_mask must be"),
        (dict(attention_mask=torch.ones(1, 5)), TypeError, "bool or integer"),
        (dict(scale=0.0), ValueError, "scale must be"),
        (dict(scale=math.nan), ValueError, "scale must be"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
        (dict(reduction="max"), ValueError, "reduction must be one of"),
        (dict(causal=1), TypeError, "causal must be a bool"),
    ],
)
def test_bad_inputs(kwargs, error, match):
    args = dict(q=torch.randn(1, 2, 5, 8), k=torch.randn(1, 1, 5, 8))
    args.update(kwargs)
    q, k = args.pop("q"), args.pop("k")
    with pytest.raises(error, match=match):
        xk.attention_received(q, k, **args)


@pytest.mark.skipif(INTERPRET, reason="checks the message outside the interpreter")
def test_triton_on_cpu_names_what_is_missing():
    q, k = make_qk(1, 1, 1, 4, 8, torch.float32, "cpu")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        xk.attention_received(q, k, backend="triton")


@pytest.mark.interpret
@pytest.mark.skipif(not INTERPRET, reason="Triton interpreter tier")
def test_triton_head_dim_limit():
    q, k = make_qk(1, 1, 1, 4, 257, torch.float32, "cpu")
    with pytest.raises(ValueError, match="d <= 256"):
        xk.attention_received(q, k, backend="triton")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dim", [64, 128, 256])
def test_cuda_model_sized(dim):
    """A Llama-like layer: GQA 32 / 8 heads, L = 1000 (not a tile multiple), bf16, left padding."""
    q, k = make_qk(2, 32, 8, 1000, dim, torch.bfloat16, "cuda")
    mask = padding_mask(2, 1000, "left", "cuda")
    expected = reference_attention_received(q, k, attention_mask=mask)
    for backend in ("auto", "triton", "torch"):
        got = xk.attention_received(q, k, attention_mask=mask, backend=backend)
        assert_close(got, expected, torch.bfloat16, msg=backend)
