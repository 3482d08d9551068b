"""xtf_kernels/ops/_cuda/row_copy.py: GPU row gather / scatter against torch's index_select / index_copy_."""

from __future__ import annotations

import pytest
import torch

from xtf_kernels.ops._cuda.row_copy import gather_rows
from xtf_kernels.ops._cuda.row_copy import scatter_rows

HAS_CUDA = torch.cuda.is_available()


def gpu_test(fn):
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")(fn))


def test_rejects_cpu_tensors_and_bad_indices():
    with pytest.raises(ValueError, match="x must be a CUDA tensor"):
        gather_rows(torch.zeros(4, 3), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="values must be a CUDA tensor"):
        scatter_rows(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), 4)


def _data(shape, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen, device="cuda").to(dtype)
    return torch.randint(0, 100, shape, generator=gen, device="cuda").to(dtype)


# Row byte lengths: 13 x 4 (4-byte units), 16 x 4 (16-byte), 13 x 2 (2-byte), 13 x 1 (1-byte), 3 x 8 (8-byte).
CASES = [
    ((37, 13), torch.float32), ((37, 16), torch.float32), ((37, 13), torch.bfloat16), ((37, 13), torch.uint8),
    ((37, 3), torch.int64), ((37, 3, 5), torch.float16), ((37,), torch.float32), ((37, 4096), torch.bfloat16),
]


@gpu_test
@pytest.mark.parametrize("shape,dtype", CASES, ids=lambda c: str(c))
def test_gather_matches_index_select(shape, dtype):
    x = _data(shape, dtype)
    index = torch.tensor([5, 0, 36, 5, 17, 2], device="cuda")
    assert torch.equal(gather_rows(x, index), x.index_select(0, index))


@gpu_test
@pytest.mark.parametrize("shape,dtype", CASES, ids=lambda c: str(c))
def test_scatter_matches_index_copy(shape, dtype):
    values = _data((6, *shape[1:]), dtype, seed=1)
    index = torch.tensor([5, 0, 36, 9, 17, 2], device="cuda")
    expected = torch.full(shape, 7, dtype=dtype, device="cuda").index_copy_(0, index, values)
    assert torch.equal(scatter_rows(values, index, shape[0], fill=7), expected)


@gpu_test
def test_non_contiguous_and_empty():
    x = _data((20, 12), torch.float32)[:, ::2]
    index = torch.tensor([3, 19, 0], device="cuda")
    assert torch.equal(gather_rows(x, index), x.index_select(0, index))
    empty = torch.zeros(0, dtype=torch.int64, device="cuda")
    assert gather_rows(x, empty).shape == (0, 6)
    assert torch.equal(scatter_rows(_data((0, 6), torch.float32), empty, 4), torch.zeros(4, 6, device="cuda"))
    assert gather_rows(_data((0, 5), torch.float32), empty).shape == (0, 5)


@gpu_test
def test_out_of_range_indices_are_skipped_not_followed():
    values = _data((3, 8), torch.float32)
    out = scatter_rows(values, torch.tensor([1, 99, -1], device="cuda"), 4, fill=0.0)
    torch.cuda.synchronize()  # a stray write would surface here (and under compute-sanitizer)
    expected = torch.zeros(4, 8, device="cuda")
    expected[1] = values[0]
    assert torch.equal(out, expected)
