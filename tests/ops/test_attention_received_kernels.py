"""The two column-sum implementations behind attention_received, called directly: the PyTorch query
chunks (every chunk size) and the Triton tiles (lengths around the tile size, head dims at the limits)."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import assert_close
from tests.test_attention import make_qk
from tests.test_attention import padding_mask
from tests.test_attention import reference_attention_received
from xtf_kernels.ops._torch import attention_received as torch_path

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def key_valid(batch, length, kind):
    mask = padding_mask(batch, length, kind, "cpu")
    return None if mask is None else mask != 0


@pytest.mark.parametrize("chunk_size", [1, 5, 36, 37, 100])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("kind", ["none", "left", "holes"])
def test_torch_chunks_agree_with_reference(chunk_size, causal, kind):
    q, k = make_qk(2, 4, 2, 37, 24, torch.float32, "cpu")
    valid = key_valid(2, 37, kind)
    sums = torch_path.column_sums(q, k, valid, causal=causal, scale=0.2, chunk_size=chunk_size)
    expected = reference_attention_received(q, k, causal=causal, scale=0.2, attention_mask=valid, reduction="sum")
    assert sums.dtype == torch.float32
    assert_close(sums, expected)


def test_torch_default_chunk_size_is_bounded():
    assert torch_path.default_chunk_size(1, 32, 4096) == 256
    assert torch_path.default_chunk_size(64, 64, 131072) == 1


@pytest.mark.interpret
@pytest.mark.skipif(not INTERPRET, reason="Triton interpreter tier: run with TRITON_INTERPRET=1")
@pytest.mark.parametrize("length", [1, 15, 16, 17, 33])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_triton_tile_boundaries(length, causal):
    """Interpreter tiles are 16 x 16: lengths below, at and across tile edges, left padding (whole padding
    rows and tiles with no visible key)."""
    from xtf_kernels.ops._triton import attention_received as triton_path

    q, k = make_qk(2, 2, 1, length, 12, torch.float32, "cpu")
    valid = key_valid(2, length, "left")
    sums = triton_path.column_sums(q, k, valid, causal=causal, scale=0.4)
    expected = reference_attention_received(q, k, causal=causal, scale=0.4, attention_mask=valid, reduction="sum")
    assert_close(sums, expected)
    assert torch.isfinite(sums).all()


@pytest.mark.interpret
@pytest.mark.skipif(not INTERPRET, reason="Triton interpreter tier: run with TRITON_INTERPRET=1")
@pytest.mark.parametrize("dim", [1, 16, 200, 256])
def test_triton_head_dims(dim):
    """d padded in registers to a power of two >= 16; 256 is the largest supported."""
    from xtf_kernels.ops._triton import attention_received as triton_path

    q, k = make_qk(1, 2, 2, 18, dim, torch.float16, "cpu")
    sums = triton_path.column_sums(q, k, None, causal=True, scale=dim**-0.5)
    expected = reference_attention_received(q, k, causal=True, scale=dim**-0.5, reduction="sum")
    assert_close(sums, expected, torch.float16)


@pytest.mark.interpret
@pytest.mark.skipif(not INTERPRET, reason="Triton interpreter tier: run with TRITON_INTERPRET=1")
def test_triton_matches_torch_path():
    """Both implementations agree on the same inputs to fp32 accuracy (different summation orders)."""
    from xtf_kernels.ops._triton import attention_received as triton_path

    q, k = make_qk(2, 4, 2, 37, 24, torch.float32, "cpu", seed=4)
    valid = key_valid(2, 37, "holes")
    args = dict(causal=True, scale=0.2)
    torch.testing.assert_close(triton_path.column_sums(q, k, valid, **args),
                               torch_path.column_sums(q, k, valid, chunk_size=7, **args), atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_triton_cuda_tiles_and_determinism(dtype):
    """GPU tiles are 64 x 64 (32 x 32 above d = 128): lengths across them, and two runs bit-identical."""
    from xtf_kernels.ops._triton import attention_received as triton_path

    for length in (63, 64, 65, 257):
        q, k = make_qk(2, 8, 2, length, 96, dtype, "cuda")
        valid = key_valid(2, length, "left").cuda()
        sums = triton_path.column_sums(q, k, valid, causal=True, scale=96**-0.5)
        expected = reference_attention_received(q, k, causal=True, attention_mask=valid, reduction="sum")
        assert_close(sums, expected, dtype, msg=f"L={length}")
        assert torch.equal(sums, triton_path.column_sums(q, k, valid, causal=True, scale=96**-0.5))
