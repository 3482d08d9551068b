"""Repeat-and-compare: every Triton path gives bitwise the same outputs when run twice on the same inputs.

A data race (a read before another thread's write, see the barriers in fused_backward.py and row_kernel.py)
or a summation order that depends on anything but the shape shows up as a bitwise difference between two
runs. The tests carry both tier markers: under TRITON_INTERPRET=1 they run on CPU tensors (where each
program runs alone, so they check the fixed merge orders), and in the cuda tier on the GPU, where the
second run starts from an allocator whose free blocks were filled with NaN, so a buffer read before it
is written poisons the output instead of reusing the first run's values.
"""

from __future__ import annotations

import pytest
import torch

from tests.ops._triton.conftest import HAS_TRITON
from tests.ops._triton.conftest import INTERPRET
from tests.ops._triton.head_reference import random_class_weights
from tests.ops._triton.head_reference import random_head
from tests.ops._triton.head_reference import random_row_grads
from xtf_kernels.ops.spec import HeadPassRequest
from xtf_kernels.ops.spec import HeadSpec

pytestmark = [pytest.mark.interpret, pytest.mark.cuda]

ALL_OPTIONS = HeadSpec(softcap=2.5, inv_temperature=1 / 0.7, label_smoothing=0.1, z_loss=1e-2)


@pytest.fixture(scope="module")
def device():
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    if INTERPRET:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("needs TRITON_INTERPRET=1 (interpret tier) or a CUDA GPU (cuda tier)")
    return torch.device("cuda")


def _poison_allocator(device):
    """Fill the caching allocator's free memory with NaN (CUDA; the CPU allocator hands out fresh pages)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        free, _ = torch.cuda.mem_get_info(device)
        blob = torch.full((min(free // 2, 2**30) // 4,), float("nan"), device=device)
        del blob


def _problem(device, rows, hidden_size, vocab, dtype, seed):
    hidden, weight, bias, targets = random_head(rows, hidden_size, vocab, dtype, bias=True, seed=seed)
    grads = random_row_grads(rows, seed=seed + 1)
    to = lambda x: None if x is None else x.to(device)  # noqa: E731
    return (to(hidden), to(weight), to(bias), to(targets), type(grads)(*(to(g) for g in grads)),
            to(random_class_weights(vocab, seed=seed)))


def _assert_bitwise_equal(first, second):
    assert type(first) is type(second)
    for name, a, b in zip(first._fields, first, second):
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), f"{name} differs between two runs"


def _chunk(device):
    return 5 if device.type == "cpu" else 256  # several chunks, the last one partial


def _shape(device):
    # Interpreter: odd shapes crossing every tile, K step, H slice and vocabulary split of the 16-32 tiles.
    # GPU: several row blocks and vocabulary splits of the real tiles.
    return (13, 31, 123) if device.type == "cpu" else (700, 512, 20011)


@pytest.mark.parametrize("path", ["fused", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_head_pass_is_bitwise_reproducible(device, monkeypatch, path, dtype):
    from xtf_kernels.ops._triton import backend

    monkeypatch.setenv("XTF_TRITON_PATH", path)
    monkeypatch.delenv("XTF_CHUNK_SIZE", raising=False)
    hidden, weight, bias, targets, grads, class_weights = _problem(device, *_shape(device), dtype, seed=20)
    options = dict(want_entropy=True, want_mean_logit=True, grads=grads, need_grad_hidden=True,
                   need_grad_weight=True, need_grad_bias=True, class_weights=class_weights,
                   chunk_size=_chunk(device) if path == "chunked" else None)
    first = backend.head_pass(hidden, weight, bias, targets, ALL_OPTIONS, **options)
    _poison_allocator(device)
    second = backend.head_pass(hidden, weight, bias, targets, ALL_OPTIONS, **options)
    _assert_bitwise_equal(first, second)
    assert all(torch.isfinite(t).all() for t in first if t is not None)


def test_recomputing_backward_is_bitwise_reproducible(device, monkeypatch):
    """The fused backward given the forward's statistics (the reduction="none" and log-prob backward)."""
    from xtf_kernels.ops._triton.fused import fused_head_pass

    hidden, weight, bias, targets, grads, _ = _problem(device, *_shape(device), torch.float32, seed=21)
    stats = fused_head_pass(hidden, weight, bias, targets, ALL_OPTIONS, HeadPassRequest(want_entropy=True))
    request = HeadPassRequest(grads=grads, lse=stats.lse, entropy=stats.entropy, need_grad_hidden=True,
                              need_grad_weight=True)
    first = fused_head_pass(hidden, weight, bias, targets, ALL_OPTIONS, request)
    _poison_allocator(device)
    second = fused_head_pass(hidden, weight, bias, targets, ALL_OPTIONS, request)
    _assert_bitwise_equal(first, second)


@pytest.mark.parametrize("path", ["fused", "chunked"])
def test_influence_delta_is_bitwise_reproducible(device, monkeypatch, path):
    from xtf_kernels.ops._triton import backend

    monkeypatch.setenv("XTF_TRITON_PATH", path)
    hidden, weight, bias, targets, _, _ = _problem(device, *_shape(device), torch.float32, seed=22)
    base = (hidden, weight, bias)
    ref = (hidden[:, :17].contiguous(), weight[:, :17].contiguous(), None)
    chunk_size = _chunk(device) if path == "chunked" else None
    first = backend.influence_delta(base, ref, targets, ALL_OPTIONS, chunk_size=chunk_size)
    _poison_allocator(device)
    second = backend.influence_delta(base, ref, targets, ALL_OPTIONS, chunk_size=chunk_size)
    assert torch.equal(first, second)
