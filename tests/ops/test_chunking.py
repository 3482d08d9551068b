"""Chunk-size arithmetic and the guarantee that no (N, V) tensor is ever allocated."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import xtf_kernels as xk
from tests.cases import make_case
from xtf_kernels.ops.chunking import resolve_chunk_size


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_no_tokens_by_vocab_tensor(reduction):
    tokens, hidden_size, vocab, chunk = 256, 16, 3000, 16
    case = make_case((tokens,), hidden_size, vocab, token_weights=True)
    with LargestTensor() as probe:
        loss = xk.linear_cross_entropy(case.hidden, case.weight, case.targets, token_weights=case.token_weights,
                                       reduction=reduction, chunk_size=chunk, backend="torch")
        torch.autograd.grad(loss, case.leaves(), torch.ones_like(loss))
    # The largest tensors are the weight / its fp32 gradient (V x H) and one (chunk x V) logits buffer.
    assert probe.largest <= max(vocab * hidden_size, chunk * vocab)
    assert probe.largest < tokens * vocab // 8


def test_token_logprobs_no_tokens_by_vocab_tensor():
    case = make_case((256,), 16, 3000)
    with LargestTensor() as probe:
        out = xk.token_logprobs(case.hidden, case.weight, case.targets, return_entropy=True, chunk_size=16)
        torch.autograd.grad((out.logprobs.sum() + out.entropy.sum()), case.leaves())
    assert probe.largest <= 3000 * 16 * 2


def test_budget_arithmetic(monkeypatch):
    monkeypatch.delenv("XTF_CHUNK_SIZE", raising=False)
    monkeypatch.setenv("XTF_CHUNK_MEMORY_MB", "256")
    cpu = torch.device("cpu")
    # 256 MiB / (128256 * 4 bytes) = 523 rows, rounded down to whole 64-row tiles.
    assert resolve_chunk_size(None, rows=10**6, vocab=128256, device=cpu, half_precision=False) == 512
    # bf16 inputs add a 2-byte copy of the gradient: 256 MiB / (128256 * 6) = 348 -> 320.
    assert resolve_chunk_size(None, rows=10**6, vocab=128256, device=cpu, half_precision=True) == 320
    assert resolve_chunk_size(None, rows=7, vocab=128256, device=cpu, half_precision=False) == 7
    assert resolve_chunk_size(3, rows=100, vocab=10, device=cpu, half_precision=False) == 3


def test_environment_overrides(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("XTF_CHUNK_SIZE", "77")
    assert resolve_chunk_size(None, rows=1000, vocab=10, device=cpu, half_precision=False) == 77
    monkeypatch.setenv("XTF_CHUNK_SIZE", "zero")
    with pytest.raises(ValueError, match="XTF_CHUNK_SIZE"):
        resolve_chunk_size(None, rows=1000, vocab=10, device=cpu, half_precision=False)
