"""The chunked driver shared by the torch, Triton-chunked and CUDA backends.

Per chunk of C kept rows: one GEMM forms the (C, V) logits in fp32 (cuBLAS / oneDNN through torch), a
row kernel turns them into per-row statistics and, when gradients are wanted, overwrites them with the
gradient of the logits; two more GEMMs form d_hidden for the chunk and accumulate d_weight in fp32.
The [N, V] logits tensor never exists: peak extra memory is one chunk plus the fp32 d_weight accumulator.

A backend plugs in a :class:`RowKernel`: a callable with the signature of
:func:`xtf_kernels.ops._torch.row_pass.row_pass` plus ``extra_buffers``. No host synchronisation happens
in the loop: the number of rows is known on the host before it starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .chunking import resolve_chunk_size
from .spec import HeadPassResult
from .spec import HeadSpec
from .spec import RowGrads


class RowKernel(NamedTuple):
    """A backend's per-chunk row math.

    run(z, targets, spec, *, want_entropy, want_mean_logit, grads, lse, entropy) -> (lse, target_logit,
        mean_logit, entropy, grad_logits): see ``_torch.row_pass.row_pass``. ``grad_logits`` may be ``z``
        itself (in place).
    extra_buffers(spec, *, want_entropy, grads) -> int: (C, V) fp32 buffers ``run`` allocates.
    writes_half_grad: for 16-bit inputs ``run`` also takes ``grad_out`` (the (C, V) 16-bit buffer the
        backward matmuls read) and ``keep_fp32_grad`` (whether the fp32 gradient is still wanted, for the
        bias gradient) and writes the rounded gradient there itself, saving the driver a (C, V) fp32 read
        and 16-bit write per chunk.
    """

    run: Callable
    extra_buffers: Callable
    writes_half_grad: bool = False


def _logits_into(out: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """out (C, V) fp32 <- hidden @ weight.T + bias, accumulating in fp32 whatever the input dtype."""
    if hidden.dtype == torch.float32:
        if bias is None:
            torch.mm(hidden, weight.t(), out=out)
        else:
            torch.addmm(bias, hidden, weight.t(), out=out)
        return out
    if hidden.is_cuda:
        # cuBLAS: 16-bit inputs, fp32 accumulation and fp32 output written straight into the chunk buffer
        # (torch >= 2.8), without a (C, V) temporary.
        torch.mm(hidden, weight.t(), out_dtype=torch.float32, out=out)
    else:
        out.copy_(torch.mm(hidden, weight.t()))
    if bias is not None:
        out.add_(bias)
    return out


def _accumulate_weight_grad(grad_weight: torch.Tensor, grad_logits: torch.Tensor, hidden: torch.Tensor):
    """grad_weight (V, H) fp32 += grad_logits.T @ hidden with fp32 accumulation."""
    if hidden.dtype == torch.float32:
        grad_weight.addmm_(grad_logits.t(), hidden)
    elif hidden.is_cuda:
        # fp32 accumulate + fp32 output without a (V, H) temporary.
        torch.addmm(grad_weight, grad_logits.t(), hidden, out_dtype=torch.float32, out=grad_weight)
    else:
        grad_weight.addmm_(grad_logits.t().float(), hidden.float())


def chunked_head_pass(
    row_kernel: RowKernel,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    spec: HeadSpec,
    *,
    want_entropy: bool = False,
    want_mean_logit: bool = False,
    grads: RowGrads | None = None,
    lse: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    need_grad_hidden: bool = False,
    need_grad_weight: bool = False,
    need_grad_bias: bool = False,
    chunk_size: int | None = None,
) -> HeadPassResult:
    """One pass over M compacted rows.

    Args:
        hidden: (M, H) fp32 / bf16 / fp16.
        weight: (V, H) same dtype; bias: (V,) or None.
        targets: (M,) int64 in [0, V).
        grads: upstream per-row gradients (M,) or None for a statistics-only pass.
        lse, entropy: (M,) fp32 from an earlier forward, to skip the max/sum pass in a recompute.
        need_grad_*: which parameter gradients to form (only when ``grads`` is given).
    """
    rows, _ = hidden.shape
    vocab = weight.shape[0]
    device = hidden.device
    half = hidden.dtype != torch.float32
    want_grad = grads is not None and (need_grad_hidden or need_grad_weight or need_grad_bias)
    if not want_grad:
        grads = None
    extra = row_kernel.extra_buffers(spec, want_entropy=want_entropy, grads=grads)
    chunk = resolve_chunk_size(
        chunk_size, rows=rows, vocab=vocab, device=device, half_precision=half and want_grad,
        extra_fp32_buffers=extra,
    )
    f32 = dict(dtype=torch.float32, device=device)
    lse_out = torch.empty(rows, **f32)
    target_out = torch.empty(rows, **f32)
    mean_out = torch.empty(rows, **f32) if want_mean_logit else None
    entropy_out = torch.empty(rows, **f32) if want_entropy else None
    grad_hidden = torch.empty_like(hidden) if want_grad and need_grad_hidden else None
    grad_weight = torch.zeros(weight.shape, **f32) if want_grad and need_grad_weight else None
    grad_bias = torch.zeros(vocab, **f32) if want_grad and need_grad_bias else None

    logits_buf = torch.empty((min(chunk, rows), vocab), **f32)
    lowp_buf = torch.empty((min(chunk, rows), vocab), dtype=hidden.dtype, device=device) if half and want_grad else None
    half_out = lowp_buf is not None and row_kernel.writes_half_grad
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        n = stop - start
        h_chunk = hidden[start:stop]
        z = _logits_into(logits_buf[:n], h_chunk, weight, bias)
        half_kwargs = dict(grad_out=lowp_buf[:n], keep_fp32_grad=grad_bias is not None) if half_out else {}
        c_lse, c_target, c_mean, c_entropy, c_grad = row_kernel.run(
            z,
            targets[start:stop],
            spec,
            want_entropy=want_entropy,
            want_mean_logit=want_mean_logit,
            grads=None if grads is None else grads.index(slice(start, stop)),
            lse=None if lse is None else lse[start:stop],
            entropy=None if entropy is None else entropy[start:stop],
            **half_kwargs,
        )
        lse_out[start:stop] = c_lse
        target_out[start:stop] = c_target
        if mean_out is not None:
            mean_out[start:stop] = c_mean
        if entropy_out is not None:
            entropy_out[start:stop] = c_entropy
        if c_grad is None:
            continue
        if grad_bias is not None:
            grad_bias += c_grad.sum(0)
        mm_grad = c_grad
        if lowp_buf is not None:
            mm_grad = lowp_buf[:n]
            if not half_out:
                mm_grad.copy_(c_grad)
        if grad_hidden is not None:
            torch.mm(mm_grad, weight, out=grad_hidden[start:stop])
        if grad_weight is not None:
            _accumulate_weight_grad(grad_weight, mm_grad, h_chunk)
    return HeadPassResult(lse_out, target_out, mean_out, entropy_out, grad_hidden, grad_weight, grad_bias)
