"""The chunked driver: fp32 upcast of 16-bit weights by vocabulary blocks on the CPU, and the optional
row-kernel keywords passed only when used."""

from __future__ import annotations

import torch

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
