"""The CUDA C++ backend (``backend="cuda"``): the chunked head pass with the kernels of csrc/.

Per chunk of C kept rows the matmuls run on cuBLAS through torch (fp32 logits, fp32 d_weight
accumulation) and the row kernels of :mod:`.row_kernel` do everything between them. Extra memory: one
chunk of C x V x (4 + 2 for 16-bit inputs with gradients) bytes plus C x splits x 16 bytes of partial
statistics. :func:`influence_delta` walks both models through one fp32 chunk buffer.
"""

from __future__ import annotations

import torch

from ..chunking import resolve_chunk_size
from ..engine import RowKernel
from ..engine import _logits_into
from ..engine import chunked_head_pass
from ..spec import HeadPassRequest
from ..spec import HeadPassResult
from ..spec import HeadSpec
from .extension import extension
from .row_copy import gather_rows  # noqa: F401  (the backend's row mover, see ops/compaction.py)
from .row_copy import scatter_rows  # noqa: F401
from .row_kernel import extra_row_buffers
from .row_kernel import row_pass
from .row_kernel import sm_count
from .row_kernel import vocab_splits

ROW_KERNEL = RowKernel(run=row_pass, extra_buffers=extra_row_buffers, writes_half_grad=True)
# What the op contract's options this backend implements: see xtf_kernels/ops/registry.py.
features = frozenset({"logit_scale", "class_weights", "argmax"})


def head_pass(hidden, weight, bias, targets, spec: HeadSpec, **options) -> HeadPassResult:
    """See :func:`xtf_kernels.ops.engine.chunked_head_pass` (hidden (M, H) and weight (V, H) on one CUDA device);
    ``options`` are the fields of :class:`~xtf_kernels.ops.spec.HeadPassRequest`."""
    return chunked_head_pass(ROW_KERNEL, hidden, weight, bias, targets, spec, HeadPassRequest(**options))


def influence_delta(base, ref, targets: torch.Tensor, spec: HeadSpec, chunk_size: int | None = None) -> torch.Tensor:
    """(M,) fp32 logp_ref - logp_base of two heads over the same compacted rows.

    Args:
        base, ref: (hidden (M, H_model), weight (V, H_model), bias (V,) or None); V must match, H may differ.
        targets: (M,) int64 in [0, V).
        spec: softcap and temperature (label smoothing and z-loss do not enter a log-probability).
        chunk_size: rows per chunk, as in :mod:`xtf_kernels.ops.chunking`.

    Per chunk: the base GEMM fills the one fp32 buffer and ``row_stats`` keeps its softmax statistics and
    target logit (C x splits x 16 + C x 4 bytes); the reference GEMM then reuses the buffer, and
    ``row_delta`` merges both models' statistics into the delta. Matches ``target_logit - lse`` of two
    :func:`xtf_kernels.ops._torch.row_pass.row_pass` calls.
    """
    (base_hidden, base_weight, base_bias), (ref_hidden, ref_weight, ref_bias) = base, ref
    rows = base_hidden.shape[0]
    vocab = base_weight.shape[0]
    device = base_hidden.device
    f32 = dict(dtype=torch.float32, device=device)
    delta = torch.empty(rows, **f32)
    if rows == 0:
        return delta
    if targets.dtype != torch.int64 or targets.shape != (rows,) or targets.device != device:
        raise ValueError(f"targets must be ({rows},) int64 on {device}, got {tuple(targets.shape)} {targets.dtype}")
    targets = targets.contiguous()
    chunk = resolve_chunk_size(chunk_size, rows=rows, vocab=vocab, device=device, half_precision=False)
    buffer = torch.empty((min(chunk, rows), vocab), **f32)
    module = extension()
    max_splits = module.max_splits()
    with torch.cuda.device(device):
        launch = dict(device=device.index, stream=torch.cuda.current_stream(device).cuda_stream)
        for start in range(0, rows, chunk):
            stop = min(start + chunk, rows)
            n = stop - start
            splits = vocab_splits(n, vocab, sm_count(device.index), max_splits)
            stats = {}
            for name, (hidden, weight, bias) in (("base", (base_hidden, base_weight, base_bias)),
                                                 ("ref", (ref_hidden, ref_weight, ref_bias))):
                z = _logits_into(buffer[:n], hidden[start:stop], weight, bias)
                partials = torch.empty((n, splits, 4), **f32)
                target_logit = torch.empty(n, **f32)
                module.row_stats(
                    logits=z.data_ptr(), rows=n, vocab=vocab, row_stride=z.stride(0),
                    targets=targets[start:stop].data_ptr(), softcap=float(spec.softcap),
                    inv_temperature=float(spec.inv_temperature), logit_scale=float(spec.logit_scale),
                    class_weights=0, splits=splits, partials=partials.data_ptr(),
                    target_logit=target_logit.data_ptr(), partial_argmax=0, **launch,
                )
                stats[name] = (partials, target_logit)
            module.row_delta(
                rows=n, splits=splits, base_partials=stats["base"][0].data_ptr(),
                base_target_logit=stats["base"][1].data_ptr(), ref_partials=stats["ref"][0].data_ptr(),
                ref_target_logit=stats["ref"][1].data_ptr(), delta=delta[start:stop].data_ptr(), **launch,
            )
    return delta
