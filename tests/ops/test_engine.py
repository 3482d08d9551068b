"""The chunked driver: fp32 upcast of 16-bit weights by vocabulary blocks on the CPU, the optional
row-kernel keywords passed only when used, the passes over each (chunk, V) buffer, and d_weight written by
the first chunk without a zero-fill."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from xtf_kernels.ops import engine
from xtf_kernels.ops._torch.row_pass import extra_row_buffers
from xtf_kernels.ops._torch.row_pass import row_pass
from xtf_kernels.ops.spec import HeadPassRequest
from xtf_kernels.ops.spec import HeadSpec
from xtf_kernels.ops.spec import RowGrads


def test_weight_blocks_cover_the_vocabulary_within_the_budget():
    weight = torch.randn(1000, 64).bfloat16()
    blocks = engine._Fp32WeightBlocks(weight, budget_bytes=100 * 64 * 4)
    assert blocks.whole is None and blocks.buffer.shape == (100, 64)  # never a (V, H) fp32 copy
    seen = []
    for start, stop, block in blocks.blocks():
        assert block.dtype == torch.float32 and block.data_ptr() == blocks.buffer.data_ptr()
        assert torch.equal(block, weight[start:stop].float())
        seen.append((start, stop))
    assert seen == [(i, i + 100) for i in range(0, 1000, 100)]


def test_weight_blocks_upcast_once_when_the_weight_fits():
    weight = torch.randn(50, 8).half()
    blocks = engine._Fp32WeightBlocks(weight, budget_bytes=2**20)
    assert [(a, b) for a, b, _ in blocks.blocks()] == [(0, 50)]
    assert blocks.buffer is None and torch.equal(blocks.whole, weight.float())


def test_16bit_cpu_logits_are_fp32_products_of_the_16bit_values():
    hidden, weight, bias = torch.randn(7, 300).bfloat16(), torch.randn(90, 300).bfloat16(), torch.randn(90).bfloat16()
    out = torch.empty(7, 90)
    engine._logits_into(out, hidden, weight, bias, engine._Fp32WeightBlocks(weight, 40 * 300 * 4))
    expected = hidden.double() @ weight.double().T + bias.double()
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-5)


def _legacy_row_kernel():
    """A row kernel written before ``want_argmax`` / ``class_weights`` existed."""

    def run(z, targets, spec, *, want_entropy, want_mean_logit, grads, lse, entropy):
        return row_pass(z, targets, spec, want_entropy=want_entropy, want_mean_logit=want_mean_logit, grads=grads,
                        lse=lse, entropy=entropy)

    return engine.RowKernel(run=run, extra_buffers=extra_row_buffers)


def test_row_kernel_without_the_newer_keywords_keeps_working():
    hidden, weight = torch.randn(11, 6), torch.randn(13, 6)
    targets = torch.randint(0, 13, (11,))
    spec = HeadSpec(softcap=2.0, label_smoothing=0.1)
    kwargs = dict(want_mean_logit=True, grads=RowGrads(loss=torch.rand(11)), need_grad_hidden=True,
                  need_grad_weight=True, chunk_size=4)
    request = HeadPassRequest(**kwargs)
    legacy = engine.chunked_head_pass(_legacy_row_kernel(), hidden, weight, None, targets, spec, request)
    current = engine.chunked_head_pass(engine.RowKernel(row_pass, extra_row_buffers), hidden, weight, None, targets,
                                       spec, request)
    assert legacy.argmax is None
    for a, b in zip(legacy, current):
        assert (a is None and b is None) or torch.equal(a, b)
    with_argmax = engine.chunked_head_pass(engine.RowKernel(row_pass, extra_row_buffers), hidden, weight, None,
                                           targets, spec, HeadPassRequest(want_argmax=True, chunk_size=4))
    assert torch.equal(with_argmax.argmax, (2.0 * torch.tanh(hidden @ weight.T / 2.0)).argmax(-1))


CHUNK, VOCAB, HIDDEN, ROWS = 8, 257, 16, 24  # three chunks; CHUNK * VOCAB is no other tensor's size
_NOT_A_PASS = {"empty.memory_format", "slice.Tensor", "t.default", "gather.default", "scatter_add_.default"}


class ChunkPasses(TorchDispatchMode):
    """The aten ops that read or write a whole (CHUNK, VOCAB) buffer: views, the allocation and the one-element-
    per-row gather / scatter do not count."""

    def __init__(self):
        super().__init__()
        self.passes: list[str] = []
        self.zero_fills = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__ in ("zero_.default", "zeros.default", "fill_.Scalar"):
            self.zero_fills += 1
        tensors = [x for x in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(x, torch.Tensor)]
        if func.__name__ not in _NOT_A_PASS and any(x.numel() == CHUNK * VOCAB for x in tensors):
            self.passes.append(func.__name__)
        return out


_GRADS = dict(grads=RowGrads(loss=torch.rand(ROWS)), need_grad_hidden=True, need_grad_weight=True)


@pytest.mark.parametrize("spec, options, passes", [
    # logits GEMM; max; subtract; exp; sum (no normalising pass: 1 / sum is folded into what reads p)
    (HeadSpec(), {}, 5),
    # + z * logit_scale / T; p (A) in place, the d_hidden and d_weight GEMMs (1 / sum and the chain factor
    # logit_scale / T folded into A)
    (HeadSpec(inv_temperature=1.3, logit_scale=0.7), _GRADS, 9),
    # + softcap: a * y / s, tanh, * s / T; slope z^2 * -(T / s)^2 + 1 in three passes, one multiply
    (HeadSpec(softcap=3.0), _GRADS, 15),
])
def test_passes_per_chunk_of_the_torch_row_math(spec, options, passes):
    hidden, weight = torch.randn(ROWS, HIDDEN), torch.randn(VOCAB, HIDDEN) * 0.3
    targets = torch.randint(0, VOCAB, (ROWS,))
    kernel = engine.RowKernel(row_pass, extra_row_buffers)
    with ChunkPasses() as probe:
        result = engine.chunked_head_pass(kernel, hidden, weight, None, targets, spec,
                                          HeadPassRequest(chunk_size=CHUNK, **options))
    assert len(probe.passes) == passes * ROWS // CHUNK, probe.passes
    assert probe.zero_fills == 0  # d_weight: written by the first chunk, accumulated by the others
    if options:
        logits = (hidden.double() @ weight.double().T) * spec.logit_scale
        if spec.softcap:
            logits = spec.softcap * torch.tanh(logits / spec.softcap)
        probs = torch.softmax(logits * spec.inv_temperature, -1)
        grad_logits = (probs - torch.nn.functional.one_hot(targets, VOCAB)) * options["grads"].loss.double()[:, None]
        grad_logits = grad_logits * spec.inv_temperature * spec.logit_scale
        if spec.softcap:
            grad_logits = grad_logits * (1 - (logits / spec.softcap) ** 2)
        torch.testing.assert_close(result.grad_weight.double(), grad_logits.T @ hidden.double(), atol=1e-5, rtol=1e-4)


def test_no_rows_gives_zero_parameter_gradients():
    hidden, weight, bias = torch.empty(0, 4), torch.randn(9, 4), torch.randn(9)
    result = engine.chunked_head_pass(engine.RowKernel(row_pass, extra_row_buffers), hidden, weight, bias,
                                      torch.empty(0, dtype=torch.int64), HeadSpec(),
                                      HeadPassRequest(grads=RowGrads(loss=torch.empty(0)), need_grad_weight=True,
                                                      need_grad_bias=True))
    assert torch.equal(result.grad_weight, torch.zeros(9, 4)) and torch.equal(result.grad_bias, torch.zeros(9))
