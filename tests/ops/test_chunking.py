"""Chunk-size arithmetic (shape only, balanced whole-tile chunks) and the guarantee that no (N, V) tensor is
ever allocated."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import xtf_kernels as xk
from tests.cases import make_case
from xtf_kernels.ops import chunking
from xtf_kernels.ops.chunking import max_chunk_rows
from xtf_kernels.ops.chunking import resolve_chunk_size

CUDA = torch.device("cuda")
H200_TOTAL_BYTES = 143771 * 2**20  # what nvidia-smi reports for an H200
LLAMA3_VOCAB, GEMMA2_VOCAB = 128256, 256000


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


@pytest.fixture
def simulated_gpu(monkeypatch):
    """A CUDA device of ``total`` bytes on a CPU machine, whose memory queries report ``free`` / ``reserved`` /
    ``allocated`` as set in the returned dict (the policy must only ever read the total)."""
    for name in ("XTF_CHUNK_SIZE", "XTF_CHUNK_MEMORY_MB"):
        monkeypatch.delenv(name, raising=False)
    memory = dict(total=H200_TOTAL_BYTES, free=H200_TOTAL_BYTES, reserved=0, allocated=0)

    class Properties:
        @property
        def total_memory(self):
            return memory["total"]

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Properties())
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (memory["free"], memory["total"]))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: memory["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: memory["allocated"])
    return memory


def _cuda_chunk(rows, vocab, half=True, extra=0):
    return resolve_chunk_size(None, rows=rows, vocab=vocab, device=CUDA, half_precision=half,
                              extra_fp32_buffers=extra)


def test_cuda_chunks_are_balanced_whole_tiles(simulated_gpu):
    # 4 GiB / (128256 * 6 bytes) = 5581 rows -> 5376 (21 tiles of 256).
    assert max_chunk_rows(vocab=LLAMA3_VOCAB, device=CUDA, half_precision=True) == 5376
    assert _cuda_chunk(16384, LLAMA3_VOCAB) == 4096  # 4 x 4096, not 5 x 2752 + 2624
    assert _cuda_chunk(4096, LLAMA3_VOCAB) == 4096  # one chunk, not 2752 + 1344
    assert _cuda_chunk(8192, LLAMA3_VOCAB) == 4096
    # 16000 rows: 3 chunks of ceil(16000 / 3) = 5334 -> 5376 rows: 5376 + 5376 + 5248.
    assert _cuda_chunk(16000, LLAMA3_VOCAB) == 5376
    # Gemma-2: 4 GiB / (256000 * 6) = 2796 -> 2560; 8192 rows -> 4 x 2048.
    assert _cuda_chunk(8192, GEMMA2_VOCAB) == 2048
    # fp32 inputs keep no 16-bit copy: 4 GiB / (128256 * 4) = 8372 -> 8192; 16384 rows -> 2 x 8192.
    assert _cuda_chunk(16384, LLAMA3_VOCAB, half=False) == 8192


def test_cuda_budget_is_a_sixteenth_of_a_small_card(simulated_gpu):
    simulated_gpu.update(total=24 * 2**30, free=24 * 2**30)
    assert chunking.memory_budget_bytes(CUDA) == 24 * 2**30 // 16  # 1.5 GiB
    # 1.5 GiB / 769,536 bytes = 2092 rows -> 2048; 16384 rows -> 8 x 2048.
    assert _cuda_chunk(16384, LLAMA3_VOCAB) == 2048


@pytest.mark.parametrize("rows", [1, 300, 4096, 5000, 16384, 16385, 65536])
def test_memory_pressure_never_changes_the_chunk(simulated_gpu, rows):
    shapes = [(rows, vocab, half, extra) for vocab in (LLAMA3_VOCAB, GEMMA2_VOCAB, 32000)
              for half in (False, True) for extra in (0, 1)]
    calm = [_cuda_chunk(*shape) for shape in shapes]
    # Steady-state training: 130 GiB reserved by the caching allocator, 2 GiB of it in use, 512 MiB free on
    # the device (the old policy took min(2 GiB, free / 4) = 128 MiB here and changed path).
    simulated_gpu.update(free=512 * 2**20, reserved=130 * 2**30, allocated=2 * 2**30)
    assert [_cuda_chunk(*shape) for shape in shapes] == calm
    simulated_gpu.update(free=0, reserved=0, allocated=0)
    assert [_cuda_chunk(*shape) for shape in shapes] == calm


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_chunks_are_few_balanced_and_tile_aligned(simulated_gpu, monkeypatch, device):
    device = torch.device(device)
    tile = chunking.tile_rows(device)
    for budget_mb in (1, 7, 64, 300, 4096):
        monkeypatch.setenv("XTF_CHUNK_MEMORY_MB", str(budget_mb))
        for vocab in (1000, 32000, LLAMA3_VOCAB):
            largest = max_chunk_rows(vocab=vocab, device=device, half_precision=True)
            assert largest >= 1 and (largest < tile or largest % tile == 0)
            for rows in (1, 63, 64, 257, 1000, 4096, 5377, 16384, 100_003):
                chunk = resolve_chunk_size(None, rows=rows, vocab=vocab, device=device, half_precision=True)
                sizes = [min(chunk, rows - start) for start in range(0, rows, chunk)]
                what = f"budget {budget_mb} MiB, V {vocab}, rows {rows}: chunks {sizes[:3]}..."
                assert 1 <= chunk <= max(largest, 1) or rows <= largest, what
                assert len(sizes) == -(-rows // largest), what  # the fewest chunks the budget allows
                assert len(set(sizes[:-1])) <= 1 and sizes[-1] <= sizes[0], what
                if largest >= tile and len(sizes) > 1:
                    assert chunk % tile == 0, what
                    assert sum(-(-n // tile) for n in sizes) == -(-rows // tile), what  # no tile wasted


def test_memory_budget_flag_replaces_the_cuda_default(simulated_gpu, monkeypatch):
    monkeypatch.setenv("XTF_CHUNK_MEMORY_MB", "1024")
    assert chunking.memory_budget_bytes(CUDA) == 2**30
    # 1 GiB / 769,536 = 1395 -> 1280; 16384 rows -> 13 chunks of ceil(16384 / 13) = 1261 -> 1280.
    assert _cuda_chunk(16384, LLAMA3_VOCAB) == 1280
    monkeypatch.setenv("XTF_CHUNK_MEMORY_MB", "-3")
    with pytest.raises(ValueError, match="XTF_CHUNK_MEMORY_MB"):
        _cuda_chunk(16384, LLAMA3_VOCAB)


def test_fixed_chunk_sizes_are_taken_as_given(simulated_gpu, monkeypatch):
    assert resolve_chunk_size(1000, rows=16384, vocab=LLAMA3_VOCAB, device=CUDA, half_precision=True) == 1000
    monkeypatch.setenv("XTF_CHUNK_SIZE", "3000")
    assert _cuda_chunk(16384, LLAMA3_VOCAB) == 3000
    assert _cuda_chunk(100, LLAMA3_VOCAB) == 100
    assert resolve_chunk_size(7, rows=16384, vocab=LLAMA3_VOCAB, device=CUDA, half_precision=True) == 7
