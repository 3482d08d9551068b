"""The Triton backend (``backend="triton"``): one head pass, two ways of running it.

- chunked (:mod:`.row_kernel`): :func:`xtf_kernels.ops.engine.chunked_head_pass` with the Triton row kernel.
  The three matmuls per chunk run on cuBLAS through torch (fp32 logits, fp32 d_weight accumulation); one
  Triton launch per chunk reads each fp32 logits row twice and writes its gradient once. Extra memory:
  one chunk of C x V x (4 + 2 for 16-bit inputs) bytes.
- fused (:mod:`.fused`): logits tiles formed with ``tl.dot`` and consumed in registers; extra memory O(N + V)
  plus the fp32 d_hidden accumulator; 10 N H V FLOP for forward + all gradients against 6 N H V chunked.

Environment flag (read at every call):
    XTF_TRITON_PATH  "auto" (default), "fused" or "chunked".

"auto" rule: chunked when the chunk memory budget of :mod:`xtf_kernels.ops.chunking` (XTF_CHUNK_MEMORY_MB,
default min(2 GiB, free / 4) on CUDA) holds a chunk of at least min(M, 2048) rows, or when the caller fixed
the chunk size (``chunk_size`` / XTF_CHUNK_SIZE); fused otherwise. Why: the chunked path does 6 N H V FLOP
on cuBLAS against the fused path's 10 N H V in Triton, so it should be the faster one whenever its chunks
are large enough for the GEMMs to run near peak; with small chunks (Liger's 128-512 rows, 141 ms at
4096 x 4096 x 128256 on an H200 against 17-18 ms for 4096-row chunked kernels, see
shared/reference/kernel_anchors.md) it is not, and then the fused path also saves the chunk's memory. The
2048-row threshold is provisional, not measured: it should be replaced by the crossover of the two paths'
forward+backward time over chunk sizes 256-8192 at the Llama-3 (H 4096, V 128256) and Gemma-2
(H 2304, V 256000) heads on the target GPU, for bf16 with and without weight gradients.
"""

from __future__ import annotations

import os

import torch

from ..chunking import resolve_chunk_size
from ..engine import RowKernel
from ..engine import chunked_head_pass
from ..spec import HeadPassResult
from ..spec import HeadSpec
from ..spec import RowGrads
from .fused import fused_head_pass
from .influence import chunked_influence_delta
from .influence import fused_influence_delta
from .row_kernel import extra_row_buffers
from .row_kernel import row_pass

ROW_KERNEL = RowKernel(run=row_pass, extra_buffers=extra_row_buffers, writes_half_grad=True)

PATHS = ("auto", "fused", "chunked")
# Smallest chunk (rows) for which "auto" takes the chunked path; provisional, see the module docstring.
MIN_FAST_CHUNK_ROWS = 2048


def requested_path() -> str:
    """XTF_TRITON_PATH, validated ("auto" when unset or empty)."""
    raw = os.environ.get("XTF_TRITON_PATH", "").strip().lower() or "auto"
    if raw not in PATHS:
        raise ValueError(f"environment variable XTF_TRITON_PATH={raw!r} must be one of {PATHS}")
    return raw


def select_path(*, rows: int, vocab: int, device: torch.device, half_precision: bool, chunk_size: int | None,
                logits_buffers: int = 1) -> str:
    """"fused" or "chunked" for a pass over ``rows`` kept rows (the rule in the module docstring).

    half_precision: the chunk also holds a 16-bit gradient copy; logits_buffers: (C, V) fp32 buffers per
    chunk (2 for the influence delta).
    """
    path = requested_path()
    if path != "auto":
        return path
    if chunk_size is not None or os.environ.get("XTF_CHUNK_SIZE", "").strip():
        return "chunked"
    chunk = resolve_chunk_size(None, rows=rows, vocab=vocab, device=device, half_precision=half_precision,
                               extra_fp32_buffers=logits_buffers - 1)
    return "chunked" if chunk >= min(rows, MIN_FAST_CHUNK_ROWS) else "fused"


def _contiguous(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.contiguous()


def head_pass(
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
    """One pass over M compacted rows; the contract of :func:`xtf_kernels.ops.engine.chunked_head_pass`.

    Args:
        hidden: (M, H) fp32 / bf16 / fp16 (any strides); weight: (V, H) same dtype; bias: (V,) or None.
        targets: (M,) int64 in [0, V) (rows already compacted: no ignore_index here).
        grads: upstream per-row gradients, each (M,) fp32 or None.
        lse, entropy: (M,) fp32 from an earlier forward (a recomputing backward).
        need_grad_*: which parameter gradients to form (only with ``grads``).
        chunk_size: rows per chunk on the chunked path (fixing it selects that path under "auto").

    Returns:
        :class:`~xtf_kernels.ops.spec.HeadPassResult`: (M,) fp32 lse / target_logit / mean_logit / entropy,
        grad_hidden (M, H) in hidden's dtype, grad_weight (V, H) and grad_bias (V,) fp32.
    """
    targets, bias, lse, entropy = (_contiguous(x) for x in (targets, bias, lse, entropy))
    if grads is not None:
        grads = RowGrads(*(_contiguous(g) for g in grads))
    want_grad = grads is not None and (need_grad_hidden or need_grad_weight or need_grad_bias)
    path = select_path(
        rows=hidden.shape[0], vocab=weight.shape[0], device=hidden.device,
        half_precision=want_grad and hidden.dtype != torch.float32, chunk_size=chunk_size,
    )
    options = dict(
        want_entropy=want_entropy, want_mean_logit=want_mean_logit, grads=grads, lse=lse, entropy=entropy,
        need_grad_hidden=need_grad_hidden, need_grad_weight=need_grad_weight, need_grad_bias=need_grad_bias,
    )
    if path == "fused":
        return fused_head_pass(hidden, weight, bias, targets, spec, **options)
    return chunked_head_pass(ROW_KERNEL, hidden, weight, bias, targets, spec, chunk_size=chunk_size, **options)


def influence_delta(base, ref, targets: torch.Tensor, spec: HeadSpec, chunk_size: int | None = None) -> torch.Tensor:
    """(M,) fp32 logp_ref - logp_base over compacted rows, both models in one pass.

    Args:
        base, ref: (hidden (M, H_m), weight (V, H_m), bias (V,) | None) per model; V shared, H may differ.
        targets: (M,) int64 in [0, V).
        spec: softcap and temperature (label smoothing / z-loss do not apply).
        chunk_size: rows per chunk on the chunked path (two (C, V) fp32 buffers).
    """
    targets = targets.contiguous()
    base = (base[0], base[1], _contiguous(base[2]))
    ref = (ref[0], ref[1], _contiguous(ref[2]))
    path = select_path(rows=targets.shape[0], vocab=base[1].shape[0], device=targets.device,
                       half_precision=False, chunk_size=chunk_size, logits_buffers=2)
    if path == "fused":
        return fused_influence_delta(base, ref, targets, spec)
    return chunked_influence_delta(base, ref, targets, spec, chunk_size)
