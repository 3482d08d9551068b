"""Row compaction on the GPU (csrc/row_copy_kernels.cu): gather kept rows, scatter rows back.

The semantics of :class:`xtf_kernels.ops.compaction.Compaction`'s ``gather`` / ``scatter`` (and of
``index_select`` / ``index_copy_`` along dim 0), for CUDA tensors of any dtype: rows move as bytes, in
16-byte units when pointers, strides and the row length allow. Indices are not range-checked on the
host (that would cost a device-to-host sync); a kernel skips an index outside [0, rows) instead of
following it, leaving that output row unwritten.
"""

from __future__ import annotations

import math

import torch

from .extension import extension


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, D) with unit column stride (a view when the trailing dims are contiguous)."""
    rows = x.reshape(x.shape[0], math.prod(x.shape[1:]))
    return rows if rows.stride(1) == 1 or rows.shape[1] <= 1 else rows.contiguous()


def _check(name: str, x: torch.Tensor, index: torch.Tensor) -> None:
    if x.device.type != "cuda":
        raise ValueError(f"{name} must be a CUDA tensor, got {x.device}")
    if x.dim() < 1:
        raise ValueError(f"{name} must have a leading row dimension, got a 0-d tensor")
    if index.dtype != torch.int64 or index.dim() != 1:
        raise TypeError(f"index must be a 1-D int64 tensor, got {index.dim()}-D {index.dtype}")
    if index.device != x.device:
        raise ValueError(f"index must be on {x.device} with {name}, got {index.device}")


def _launch(kernel, src: torch.Tensor, dst: torch.Tensor, index: torch.Tensor, index_bound: int) -> None:
    item = src.element_size()
    with torch.cuda.device(src.device):
        kernel(
            src=src.data_ptr(), dst=dst.data_ptr(), index=index.data_ptr(), rows=index.shape[0],
            index_bound=index_bound, row_bytes=src.shape[1] * item, src_stride=src.stride(0) * item,
            dst_stride=dst.stride(0) * item, device=src.device.index,
            stream=torch.cuda.current_stream(src.device).cuda_stream,
        )


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index] along dim 0: (N, ...) and (M,) int64 -> (M, ...) in x's dtype."""
    _check("x", x, index)
    index = index.contiguous()
    src = _as_rows(x)
    out = torch.empty((index.shape[0], src.shape[1]), dtype=x.dtype, device=x.device)
    _launch(extension().gather_rows, src, out, index, index_bound=x.shape[0])
    return out.view(index.shape[0], *x.shape[1:])


def scatter_rows(values: torch.Tensor, index: torch.Tensor, total: int, fill: float = 0.0) -> torch.Tensor:
    """(M, ...) rows placed at ``index`` of a (total, ...) tensor filled with ``fill`` elsewhere."""
    _check("values", values, index)
    if index.shape[0] != values.shape[0]:
        raise ValueError(f"index has {index.shape[0]} entries but values has {values.shape[0]} rows")
    index = index.contiguous()
    src = _as_rows(values)
    out = torch.full((total, src.shape[1]), fill, dtype=values.dtype, device=values.device)
    _launch(extension().scatter_rows, src, out, index, index_bound=total)
    return out.view(total, *values.shape[1:])
