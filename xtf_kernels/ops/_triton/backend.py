"""The Triton backend (``backend="triton"``): one head pass, two ways of running it.

- chunked (:mod:`.row_kernel`): :func:`xtf_kernels.ops.engine.chunked_head_pass` with the Triton row kernel.
  The three matmuls per chunk run on cuBLAS through torch (fp32 logits, fp32 d_weight accumulation); one
  Triton launch per chunk reads each fp32 logits row twice and writes its gradient once. Extra memory:
  one chunk of C x V x (4 + 2 for 16-bit inputs) bytes.
- fused (:mod:`.fused`): logits tiles formed with ``tl.dot`` and consumed in registers; extra memory O(N + V)
  plus the fp32 d_hidden accumulator; 10 N H V FLOP for forward + all gradients against 6 N H V chunked.

Environment flag (read at every call):
    XTF_TRITON_PATH  "auto" (default), "fused" or "chunked".

"auto" rule, a function of the shape alone (never of free memory, so a training step takes the same path
and the same summation order every time): fused when the pass has fewer than ``FUSED_MAX_ROWS`` = 256
kept rows, chunked otherwise; a fixed chunk size (``chunk_size`` / XTF_CHUNK_SIZE) selects chunked.
Why 256 (argued from byte and FLOP counts at the Llama-3 head, H 4096, V 128256, bf16, on an H200 at
~4.8 TB/s and ~650 dense TFLOP/s; not yet measured): for small N both paths are bound by memory.
Forward + both gradients read the 1.05 GB weight three times (fused) or twice (chunked) and write the
2.1 GB fp32 d_weight (fused ~5.3 GB, ~1.1 ms); the chunked path adds ~14 bytes of (C, V) logits traffic
per logit, the d_weight read-back of its addmm and 3 GEMM launches on a fraction of one 256-row tile,
whose cuBLAS kernels run far below peak there. The fused path's 10 N H V FLOP (against 6) stay hidden
under its memory time up to ~130 rows (1.0 TFLOP, ~1.0 ms) and cost ~2 ms at 256 rows, where the chunked
GEMMs first get a whole tile: the estimates cross between ~130 and 256 rows, and above 256 the chunked path
wins clearly (the fused backward's two recomputes and fp32 accumulators that do not fit in L2). The crossover
to measure: forward + backward time of both paths over 16-1024 rows at the Llama-3 and Gemma-2
(H 2304, V 256000) heads, bf16, with and without weight gradients.
"""

from __future__ import annotations

import os

import torch

from ..engine import RowKernel
from ..engine import chunked_head_pass
from ..spec import HeadPassRequest
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
# "auto" takes the fused path below this many kept rows (argued, not measured: see the module docstring).
FUSED_MAX_ROWS = 256
# What the op contract's options this backend implements (every path): see xtf_kernels/ops/registry.py.
features = frozenset({"logit_scale", "class_weights", "argmax"})


def requested_path() -> str:
    """XTF_TRITON_PATH, validated ("auto" when unset or empty)."""
    raw = os.environ.get("XTF_TRITON_PATH", "").strip().lower() or "auto"
    if raw not in PATHS:
        raise ValueError(f"environment variable XTF_TRITON_PATH={raw!r} must be one of {PATHS}")
    return raw


def select_path(*, rows: int, chunk_size: int | None) -> str:
    """"fused" or "chunked" for a pass over ``rows`` kept rows (the rule in the module docstring)."""
    path = requested_path()
    if path != "auto":
        return path
    if chunk_size is not None or os.environ.get("XTF_CHUNK_SIZE", "").strip():
        return "chunked"
    return "fused" if rows < FUSED_MAX_ROWS else "chunked"


def _contiguous(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.contiguous()


def head_pass(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    spec: HeadSpec,
    **options,
) -> HeadPassResult:
    """One pass over M compacted rows; the contract of :func:`xtf_kernels.ops.engine.chunked_head_pass`.

    Args:
        hidden: (M, H) fp32 / bf16 / fp16 (any strides); weight: (V, H) same dtype; bias: (V,) or None.
        targets: (M,) int64 in [0, V) (rows already compacted: no ignore_index here).
        options: the fields of :class:`~xtf_kernels.ops.spec.HeadPassRequest`; a fixed ``chunk_size`` selects
            the chunked path under "auto".

    Returns:
        :class:`~xtf_kernels.ops.spec.HeadPassResult`: (M,) fp32 lse / target_logit / mean_logit / entropy,
        grad_hidden (M, H) in hidden's dtype, grad_weight (V, H) and grad_bias (V,) fp32, argmax (M,) int64.
    """
    request = HeadPassRequest(**options)
    # The kernels index rows and columns with unit strides.
    request = request._replace(
        lse=_contiguous(request.lse), entropy=_contiguous(request.entropy),
        class_weights=_contiguous(request.class_weights),
        grads=None if request.grads is None else RowGrads(*(_contiguous(g) for g in request.grads)),
    )
    targets, bias = targets.contiguous(), _contiguous(bias)
    if select_path(rows=hidden.shape[0], chunk_size=request.chunk_size) == "fused":
        return fused_head_pass(hidden, weight, bias, targets, spec, request)
    return chunked_head_pass(ROW_KERNEL, hidden, weight, bias, targets, spec, request)


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
    path = select_path(rows=targets.shape[0], chunk_size=chunk_size)
    if path == "fused":
        return fused_influence_delta(base, ref, targets, spec)
    return chunked_influence_delta(base, ref, targets, spec, chunk_size)
