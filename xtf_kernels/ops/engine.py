"""The chunked driver shared by the torch, Triton-chunked and CUDA backends.

Per chunk of C kept rows: one GEMM forms the (C, V) logits in fp32 (cuBLAS / oneDNN through torch), a
row kernel turns them into per-row statistics and, when gradients are wanted, overwrites them with the
gradient of the logits; two more GEMMs form d_hidden for the chunk and accumulate d_weight in fp32.
The [N, V] logits tensor never exists: peak extra memory is one chunk plus the fp32 d_weight accumulator.
Float64 inputs run the same passes in float64 (so ``torch.autograd.gradcheck`` applies).

16-bit inputs: on CUDA the GEMMs read the 16-bit operands and accumulate and write fp32 (cuBLAS); d_hidden
reads the gradient rounded to the input dtype. The CPU has no 16-bit GEMM with an fp32 output (torch's
``mm(..., out_dtype=)`` is CUDA-only; oneDNN rounds its fp32 accumulator to 16 bits: 1.6e-2 per-token loss
error at H 256 in bf16), so there the logits and d_weight GEMMs run in fp32 on the upcast chunk of hidden
rows and the weight upcast one block of vocabulary rows at a time (:class:`_Fp32WeightBlocks`): the loss,
every per-row output and d_weight equal the fp32 computation on the 16-bit values. d_hidden (stored in the
16-bit dtype) is formed as on CUDA for bf16, with oneDNN's bf16 GEMM on the rounded gradient (fp32
accumulation inside; twice the fp32 rate on this AVX512-BF16 CPU), and in fp32 for fp16, whose CPU GEMM is
4x slower than fp32 here.

Memory traffic per chunk, counted in passes over the (C, V) buffer and bytes per logit (fp32 logits; the
(C, V) traffic is what grows with the vocabulary, and at C >= a few hundred rows it dominates everything but
the GEMMs' reads of the weight). The passes of the torch row math are pinned by tests/ops/test_engine.py.

- Triton / CUDA row kernel, 16-bit inputs, loss with gradients, no bias (GPU; unchanged here): logits GEMM
  writes fp32 (4 B); the row kernel reads them twice, once for max / sum-exp and once for the gradient
  (8 B), and writes the 16-bit gradient (2 B); the d_hidden and d_weight GEMMs read it (2 + 2 B):
  6 passes, 18 B per logit. A bias adds the fp32 gradient copy and its column sum (4 + 4 B).
- torch row math, fp32, loss with gradients: before, GEMM write (4 B), max (4), subtract (8), exp (8),
  sum (4), normalise p (8), p * A (8), two GEMM reads (8): 9 passes, 52 B per logit; now the normalisation
  1 / sum and the chain factor logit_scale / T are per-row scalars folded into A: 8 passes, 44 B. A
  statistics-only pass (log-probs under no_grad): 6 passes, 36 B -> 5 passes, 28 B. With softcap: 18 passes,
  136 B -> 15 passes, 108 B (the tanh slope formed in 3 passes over the logits and one multiply, the chain
  factor in the coefficients).
- Per call, every backend: d_weight and d_bias were zero-filled, then accumulated by every chunk; now the
  first chunk's GEMM writes them and the later chunks add: 8 V H bytes less (no (V, H) fp32 fill, no read
  of it in the first GEMM: 4.2 GB at the Llama-3 head, H 4096, V 128256, about 0.9 ms at an H200's
  4.8 TB/s; not measured).
- Not done, and why: the unit-gradient precompute (ops/custom_ops.py) scales d_weight by the upstream
  gradient and casts it to the weight's dtype in the backward, one (V, H) fp32 read and 16-bit write; fusing
  that into the last chunk's epilogue would need the upstream gradient during the forward, which the
  precompute design does not have (it is 1.0 only when ``loss.backward()`` is called on the loss itself,
  which the op cannot know without a host sync). Forming the log-sum-exp in the logits GEMM's epilogue, or
  from 16-bit logits in one read, needs a custom GEMM (cuBLAS has no such epilogue) and changes the
  logits' precision: a GPU-only design, measured by benchmarks/gpu_run.sh first.

A backend plugs in a :class:`RowKernel`: a callable with the signature of
:func:`xtf_kernels.ops._torch.row_pass.row_pass` plus ``extra_buffers``. No host synchronisation happens
in the loop: the number of rows is known on the host before it starts.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from typing import NamedTuple

import torch

from .chunking import memory_budget_bytes
from .chunking import resolve_chunk_size
from .spec import HeadPassRequest
from .spec import HeadPassResult
from .spec import HeadSpec


class RowKernel(NamedTuple):
    """A backend's per-chunk row math.

    run(z, targets, spec, *, want_entropy, want_mean_logit, grads, lse, entropy) -> (lse, target_logit,
        mean_logit, entropy, grad_logits): see ``_torch.row_pass.row_pass``. ``grad_logits`` may be ``z``
        itself (in place). Two keyword arguments are passed only when a call uses them, so a row kernel
        that does not know them keeps working for everything else: ``want_argmax=True`` (then ``run``
        returns a sixth element, the (C,) int64 argmax) and ``class_weights=`` (V,).
    extra_buffers(spec, *, want_entropy, grads) -> int: (C, V) fp32 buffers ``run`` allocates.
    writes_half_grad: for 16-bit inputs ``run`` also takes ``grad_out`` (the (C, V) 16-bit buffer the
        backward matmuls read) and ``keep_fp32_grad`` (whether the fp32 gradient is still wanted, for the
        bias gradient) and writes the rounded gradient there itself, saving the driver a (C, V) fp32 read
        and 16-bit write per chunk.
    """

    run: Callable
    extra_buffers: Callable
    writes_half_grad: bool = False


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, else fp32: the dtype of logits, per-row statistics and d_weight."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Fp32WeightBlocks:
    """A 16-bit (V, H) weight seen as fp32 blocks of vocabulary rows, for the CPU GEMMs.

    Memory arithmetic: the fp32 copy is bounded by the chunk memory budget (``XTF_CHUNK_MEMORY_MB``, 256 MiB
    on the CPU). When the whole weight fits (V * H * 4 bytes: 64 MiB at H 512, V 32768) it is upcast once
    per call; otherwise it is upcast block by block into one reusable buffer each time a GEMM needs it (at
    the Llama-3 head, H 4096, V 128256, 2.1 GB in fp32: 16384-row blocks, 8 per GEMM). The upcasts read
    and write V * H * 6 bytes per GEMM, against 2 * C * V * H flops for the GEMM itself: at this machine's
    ~10 GB/s and ~100 GFLOP/s fp32 that is under 2% for chunks of C >= 500 rows.
    """

    def __init__(self, weight: torch.Tensor, budget_bytes: int):
        vocab, hidden = weight.shape
        self.weight = weight
        self.rows = max(1, min(vocab, budget_bytes // max(4 * hidden, 1)))
        self.whole = weight.float() if self.rows == vocab else None
        self.buffer = None if self.whole is not None else weight.new_empty((self.rows, hidden), dtype=torch.float32)

    def blocks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(start, stop, fp32 rows weight[start:stop]) covering the vocabulary."""
        vocab = self.weight.shape[0]
        if self.whole is not None:
            yield 0, vocab, self.whole
            return
        for start in range(0, vocab, self.rows):
            stop = min(start + self.rows, vocab)
            block = self.buffer[: stop - start]
            block.copy_(self.weight[start:stop])
            yield start, stop, block


def _logits_into(out: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 upcast: _Fp32WeightBlocks | None = None):
    """out (C, V) fp32 (float64) <- hidden @ weight.T + bias, accumulating in out's dtype whatever the input's.

    upcast: the fp32 weight blocks of a 16-bit weight on the CPU (see the module docstring), else None.
    """
    if hidden.dtype == out.dtype:
        if bias is None:
            torch.mm(hidden, weight.t(), out=out)
        else:
            torch.addmm(bias, hidden, weight.t(), out=out)
        return out
    if upcast is not None:
        hidden32 = hidden.float()  # (C, H): small next to the (C, V) chunk
        for start, stop, block in upcast.blocks():
            torch.mm(hidden32, block.t(), out=out[:, start:stop])  # strided output, no temporary
    else:
        # cuBLAS: 16-bit inputs, fp32 accumulation and fp32 output written straight into the chunk buffer,
        # without a (C, V) temporary. ``out_dtype`` needs torch >= 2.8 (the package's floor on CUDA).
        torch.mm(hidden, weight.t(), out_dtype=torch.float32, out=out)
    if bias is not None:
        out.add_(bias)
    return out


def _grad_hidden_into(out: torch.Tensor, grad_logits: torch.Tensor, upcast: _Fp32WeightBlocks) -> None:
    """out (C, H) fp16 <- grad_logits (C, V) fp32 @ weight, accumulated in fp32 over the weight blocks."""
    acc = None
    for start, stop, block in upcast.blocks():
        if acc is None:
            acc = torch.mm(grad_logits[:, start:stop], block)
        else:
            acc.addmm_(grad_logits[:, start:stop], block)
    out.copy_(acc)


def _accumulate_weight_grad(grad_weight: torch.Tensor, grad_logits: torch.Tensor, hidden: torch.Tensor, *,
                            first: bool):
    """grad_weight (V, H) fp32 (float64) = (first chunk) or += (later chunks) grad_logits.T @ hidden,
    accumulating in grad_weight's dtype.

    The first chunk writes the product over the uninitialised buffer (``mm(out=)``): no zero-fill of the
    (V, H) accumulator and no read of it in that GEMM, 8 V H bytes less per call (2.1 GB of fp32 written
    and as much read at the Llama-3 head, H 4096, V 128256). grad_logits is (C, V) in grad_weight's dtype,
    or 16-bit on CUDA (the rounded gradient the d_hidden GEMM reads too); a 16-bit hidden is upcast per chunk
    on the CPU ((C, H), small).
    """
    grad_t = grad_logits.t()
    if hidden.dtype == grad_weight.dtype or not hidden.is_cuda:
        hidden = hidden if hidden.dtype == grad_weight.dtype else hidden.float()
        if first:
            torch.mm(grad_t, hidden, out=grad_weight)
        else:
            grad_weight.addmm_(grad_t, hidden)
    elif first:
        # fp32 accumulate + fp32 output without a (V, H) temporary (torch >= 2.8).
        torch.mm(grad_t, hidden, out_dtype=torch.float32, out=grad_weight)
    else:
        torch.addmm(grad_weight, grad_t, hidden, out_dtype=torch.float32, out=grad_weight)


def chunked_head_pass(
    row_kernel: RowKernel,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    spec: HeadSpec,
    request: HeadPassRequest,
) -> HeadPassResult:
    """One pass over M compacted rows.

    Args:
        hidden: (M, H) fp32 / bf16 / fp16 / float64.
        weight: (V, H) same dtype; bias: (V,) or None.
        targets: (M,) int64 in [0, V).
        request: what to form (:class:`~xtf_kernels.ops.spec.HeadPassRequest`: the per-row outputs, the
            upstream per-row gradients and which parameter gradients, class weights, a saved lse / entropy,
            the chunk size).

    Every fp32 reads float64 for float64 inputs.
    """
    rows, _ = hidden.shape
    vocab = weight.shape[0]
    device = hidden.device
    acc_dtype = accumulation_dtype(hidden.dtype)
    half = hidden.dtype != acc_dtype
    want_grad = request.wants_grad
    grads = request.grads if want_grad else None
    need_grad_hidden, need_grad_weight, need_grad_bias = (
        want_grad and flag for flag in (request.need_grad_hidden, request.need_grad_weight, request.need_grad_bias)
    )
    want_entropy, want_mean_logit, lse, entropy = request.want_entropy, request.want_mean_logit, request.lse, \
        request.entropy
    upcast = _Fp32WeightBlocks(weight, memory_budget_bytes(device)) if half and not hidden.is_cuda else None
    # The d_hidden GEMM (and on CUDA the d_weight GEMM) reads a 16-bit copy of the chunk's gradient: on CUDA,
    # and for bf16 on the CPU (see the module docstring).
    native_grad_hidden = upcast is None or hidden.dtype == torch.bfloat16
    lowp_grad = half and want_grad and (upcast is None or (native_grad_hidden and need_grad_hidden))
    extra = row_kernel.extra_buffers(spec, want_entropy=want_entropy, grads=grads)
    chunk = resolve_chunk_size(
        request.chunk_size, rows=rows, vocab=vocab, device=device, half_precision=lowp_grad,
        extra_fp32_buffers=extra,
    )
    acc = dict(dtype=acc_dtype, device=device)
    lse_out = torch.empty(rows, **acc)
    target_out = torch.empty(rows, **acc)
    mean_out = torch.empty(rows, **acc) if want_mean_logit else None
    entropy_out = torch.empty(rows, **acc) if want_entropy else None
    argmax_out = torch.empty(rows, dtype=torch.int64, device=device) if request.want_argmax else None
    grad_hidden = torch.empty_like(hidden) if need_grad_hidden else None
    # Written by the first chunk, accumulated by the later ones (no zero-fill; see _accumulate_weight_grad).
    grad_weight = torch.empty(weight.shape, **acc) if need_grad_weight else None
    grad_bias = torch.empty(vocab, **acc) if need_grad_bias else None

    logits_buf = torch.empty((min(chunk, rows), vocab), **acc)
    lowp_buf = torch.empty((min(chunk, rows), vocab), dtype=hidden.dtype, device=device) if lowp_grad else None
    half_out = lowp_buf is not None and row_kernel.writes_half_grad
    optional = request.row_kernel_options()
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        n = stop - start
        h_chunk = hidden[start:stop]
        z = _logits_into(logits_buf[:n], h_chunk, weight, bias, upcast)
        # The CPU's d_weight GEMM reads the fp32 gradient.
        keep_fp32 = grad_bias is not None or (upcast is not None and grad_weight is not None)
        half_kwargs = dict(grad_out=lowp_buf[:n], keep_fp32_grad=keep_fp32) if half_out else {}
        c_lse, c_target, c_mean, c_entropy, c_grad, *c_argmax = row_kernel.run(
            z,
            targets[start:stop],
            spec,
            want_entropy=want_entropy,
            want_mean_logit=want_mean_logit,
            grads=None if grads is None else grads.index(slice(start, stop)),
            lse=None if lse is None else lse[start:stop],
            entropy=None if entropy is None else entropy[start:stop],
            **half_kwargs,
            **optional,
        )
        lse_out[start:stop] = c_lse
        target_out[start:stop] = c_target
        if mean_out is not None:
            mean_out[start:stop] = c_mean
        if entropy_out is not None:
            entropy_out[start:stop] = c_entropy
        if argmax_out is not None:
            argmax_out[start:stop] = c_argmax[0]
        if c_grad is None:
            continue
        first = start == 0
        if grad_bias is not None:
            if first:
                torch.sum(c_grad, 0, out=grad_bias)
            else:
                grad_bias += c_grad.sum(0)
        mm_grad = c_grad
        if lowp_buf is not None:
            mm_grad = lowp_buf[:n]
            if not half_out:
                mm_grad.copy_(c_grad)
        if grad_hidden is not None:
            if native_grad_hidden:
                torch.mm(mm_grad, weight, out=grad_hidden[start:stop])
            else:
                _grad_hidden_into(grad_hidden[start:stop], c_grad, upcast)
        if grad_weight is not None:
            _accumulate_weight_grad(grad_weight, c_grad if upcast is not None else mm_grad, h_chunk, first=first)
    if rows == 0:  # no chunk wrote them
        for accumulator in (grad_weight, grad_bias):
            if accumulator is not None:
                accumulator.zero_()
    return HeadPassResult(lse_out, target_out, mean_out, entropy_out, grad_hidden, grad_weight, grad_bias,
                          argmax_out)
