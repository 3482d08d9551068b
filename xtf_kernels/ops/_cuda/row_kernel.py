"""The CUDA row kernel of the chunked head pass (csrc/row_kernels.cu), driven from PyTorch tensors.

Matches :func:`xtf_kernels.ops._torch.row_pass.row_pass` (same outputs, the formula of
:mod:`xtf_kernels.ops.spec`). Per chunk of C rows: ``row_stats`` reads the fp32 raw logits once for the
online softmax statistics of each (row, vocabulary slice) and the target logit, and ``row_finalize``
merges them and reads the logits once more to write the gradient with respect to the raw logits, in
place and / or rounded into the 16-bit buffer of the backward matmuls. With the forward's log-sum-exp
given (the recomputing backward) the statistics kernel is skipped: one read and one write per logit.

Everything the kernels assume is checked here (dtypes, devices, shapes, unit column stride), since the
extension receives raw pointers. Launches go to the current stream of the logits' device.
"""

from __future__ import annotations

import functools

import torch

from ..spec import HeadSpec
from ..spec import RowGrads
from .extension import extension

# A slice of at least 4096 logits gives each of a block's 256 threads one full unrolled step of four
# 16-byte loads; below that, splitting a row costs more in merging than it gains in parallelism.
MIN_SLICE = 4096
# Blocks per SM the split heuristic aims for: with 48 registers per thread (row_finalize_kernel's launch
# bound; 56 with class weights, 4 blocks), 5 blocks of 256 threads fit.
BLOCKS_PER_SM = 4
_HALF_KINDS = {torch.float16: 1, torch.bfloat16: 2}


def vocab_splits(rows: int, vocab: int, sm_count: int, max_splits: int) -> int:
    """Vocabulary slices per row: enough blocks to fill the GPU when rows are few, never slices < MIN_SLICE.

    With C = 2048 rows on 132 SMs every row is one block (splits = 1); a single row of V = 128256 is
    split 31 ways, so all SMs stream it.
    """
    if rows <= 0:
        return 1
    wanted = -(-BLOCKS_PER_SM * sm_count // rows)
    return max(1, min(max_splits, wanted, vocab // MIN_SLICE))


@functools.cache
def sm_count(index: int) -> int:
    """Streaming multiprocessors of cuda:index (132 on an H100 SXM / H200)."""
    return torch.cuda.get_device_properties(index).multi_processor_count


def _address(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _row_vector(name: str, t: torch.Tensor | None, rows: int, device: torch.device, dtype: torch.dtype):
    """``t`` as a contiguous (rows,) tensor of ``dtype`` on ``device``; TypeError / ValueError naming it otherwise."""
    if t is None:
        return None
    if t.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device} with the logits, got {t.device}")
    if t.shape != (rows,):
        raise ValueError(f"{name} must have shape ({rows},), got {tuple(t.shape)}")
    return t.contiguous()


def row_pass(
    z: torch.Tensor,
    targets: torch.Tensor,
    spec: HeadSpec,
    *,
    want_entropy: bool = False,
    want_mean_logit: bool = False,
    grads: RowGrads | None = None,
    lse: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    grad_out: torch.Tensor | None = None,
    keep_fp32_grad: bool = True,
    want_argmax: bool = False,
    class_weights: torch.Tensor | None = None,
):
    """Per-row statistics of one chunk and, with ``grads``, the gradient with respect to the raw logits.

    Args:
        z: (C, V) fp32 raw logits on a CUDA device, unit column stride; overwritten with the fp32 gradient
            when ``grads`` is given and ``keep_fp32_grad`` (or there is no ``grad_out``).
        targets: (C,) int64 in [0, V) (a row with any other value gets a NaN target logit).
        spec: logits transform (softcap, temperature, logit scale) and loss terms.
        want_entropy / want_mean_logit: compute those per-row statistics.
        grads: upstream per-row gradients, each (C,) fp32 or None.
        lse, entropy: (C,) fp32 from an earlier forward; with ``lse`` the statistics kernel is skipped when
            nothing else needs it.
        grad_out: (C, V) fp16 / bf16 with unit column stride, or None: receives the gradient rounded to
            16 bits (the operand of the backward matmuls for 16-bit inputs).
        keep_fp32_grad: also write the fp32 gradient over ``z`` (the bias gradient needs it).
        want_argmax: also return the (C,) int64 first index of each row's maximal final logit (forces the
            statistics kernel; slices' argmaxes are merged here when a row is split).
        class_weights: (V,) fp32 per-class weights of the loss on the logits' device, or None: the mean logit
            becomes (1 / V) sum_j cw_j z_j and the loss gradient follows the op contract's weighted formula.

    Returns:
        (lse, target_logit, mean_logit | None, entropy | None, grad): (C,) fp32 statistics; ``grad`` is ``z``
        when the fp32 gradient was written, else ``grad_out``, or None without ``grads``; with
        ``want_argmax`` a sixth element, the (C,) int64 argmax.
    """
    if z.dtype != torch.float32 or z.dim() != 2:
        raise TypeError(f"z must be a 2-D float32 logits chunk, got {z.dim()}-D {z.dtype}")
    if z.device.type != "cuda":
        raise ValueError(f"z must be a CUDA tensor for the cuda row kernel, got {z.device}")
    if z.stride(1) != 1 and z.shape[1] > 1:
        raise ValueError(f"z must have unit column stride, got strides {z.stride()}")
    rows, vocab = z.shape
    device = z.device
    targets = _row_vector("targets", targets, rows, device, torch.int64)
    lse = _row_vector("lse", lse, rows, device, torch.float32)
    entropy = _row_vector("entropy", entropy, rows, device, torch.float32)
    class_weights = _row_vector("class_weights", class_weights, vocab, device, torch.float32)
    write_grad = grads is not None
    grads = RowGrads(*(_row_vector(f"grads.{name}", g, rows, device, torch.float32)
                       for name, g in zip(RowGrads._fields, grads or RowGrads())))
    write_half = write_grad and grad_out is not None
    if write_half:
        if grad_out.dtype not in _HALF_KINDS or grad_out.shape != z.shape or grad_out.device != device:
            raise ValueError(
                f"grad_out must be a float16 / bfloat16 tensor of shape {tuple(z.shape)} on {device}, got "
                f"{grad_out.dtype} {tuple(grad_out.shape)} on {grad_out.device}"
            )
        if grad_out.stride(1) != 1 and vocab > 1:
            raise ValueError(f"grad_out must have unit column stride, got strides {grad_out.stride()}")
    write_fp32 = write_grad and (keep_fp32_grad or grad_out is None)

    f32 = dict(dtype=torch.float32, device=device)
    need_entropy_stat = (want_entropy or grads.entropy is not None) and entropy is None
    stats_pass = lse is None or want_mean_logit or need_entropy_stat or want_argmax
    lse_out = lse if lse is not None else torch.empty(rows, **f32)
    target_out = torch.empty(rows, **f32)
    mean_out = torch.empty(rows, **f32) if want_mean_logit else None
    entropy_out = torch.empty(rows, **f32) if need_entropy_stat else entropy
    grad = (z if write_fp32 else grad_out) if write_grad else None
    argmax = torch.empty(rows, dtype=torch.int64, device=device) if want_argmax else None
    if rows == 0:
        result = (lse_out, target_out, mean_out, entropy_out if want_entropy else None, grad)
        return (*result, argmax) if want_argmax else result

    module = extension()
    splits = vocab_splits(rows, vocab, sm_count(device.index), module.max_splits())
    chunk = dict(
        logits=z.data_ptr(), rows=rows, vocab=vocab, row_stride=z.stride(0), targets=targets.data_ptr(),
        softcap=float(spec.softcap), inv_temperature=float(spec.inv_temperature),
        logit_scale=float(spec.logit_scale), splits=splits,
    )
    # Class weights enter the statistics only through the mean logit, and the gradient only through the
    # loss term: each kernel gets them only when they change its result (no per-logit load otherwise).
    stats_weights = _address(class_weights) if want_mean_logit else 0
    use_weights = class_weights is not None and write_grad and grads.loss is not None
    weight_sum = class_weights.sum(dtype=torch.float32).reshape(1) if use_weights else None  # no host sync
    with torch.cuda.device(device):
        launch = dict(device=device.index, stream=torch.cuda.current_stream(device).cuda_stream)
        partials = torch.empty((rows, splits, 4), **f32) if stats_pass else None  # RowPartial: 4 floats
        partial_argmax = torch.empty((rows, splits), dtype=torch.int64, device=device) if want_argmax else None
        if stats_pass:
            module.row_stats(**chunk, class_weights=stats_weights, partials=partials.data_ptr(),
                             target_logit=target_out.data_ptr(), partial_argmax=_address(partial_argmax), **launch)
        module.row_finalize(
            **chunk,
            class_weights=_address(class_weights) if use_weights else 0,
            class_weight_sum=_address(weight_sum),
            partials=_address(partials),
            lse_in=_address(lse),
            entropy_in=_address(entropy),
            grad_loss=_address(grads.loss),
            grad_logprob=_address(grads.logprob),
            grad_entropy=_address(grads.entropy),
            grad_lse=_address(grads.lse),
            label_smoothing=float(spec.label_smoothing),
            z_loss=float(spec.z_loss),
            write_fp32_grad=write_fp32,
            half_grad=_address(grad_out) if write_half else 0,
            half_grad_kind=_HALF_KINDS[grad_out.dtype] if write_half else 0,
            half_grad_stride=grad_out.stride(0) if write_half else 0,
            lse_out=0 if lse is not None else lse_out.data_ptr(),
            target_logit_out=0 if stats_pass else target_out.data_ptr(),
            mean_logit_out=_address(mean_out),
            entropy_out=_address(entropy_out) if need_entropy_stat else 0,
            **launch,
        )
        if want_argmax:
            argmax.copy_(_merge_argmax(partials, partial_argmax))
    result = (lse_out, target_out, mean_out, entropy_out if want_entropy else None, grad)
    return (*result, argmax) if want_argmax else result


def _merge_argmax(partials: torch.Tensor, partial_argmax: torch.Tensor) -> torch.Tensor:
    """(C,) int64 row argmax from the (C, splits) per-slice argmaxes: the first slice holding the row's maximum
    (slices are contiguous and in column order, so that slice holds its first index). Split rows are few
    (a chunk of C rows is split only when C < 4 x SMs), so this runs on (C, splits) values, a few hundred."""
    if partial_argmax.shape[1] == 1:
        return partial_argmax[:, 0]
    maxima = partials[..., 0]
    first = (maxima == maxima.amax(1, keepdim=True)).to(torch.int8).argmax(1, keepdim=True)
    return partial_argmax.gather(1, first).squeeze(1)


def extra_row_buffers(spec: HeadSpec, *, want_entropy: bool, grads: RowGrads | None) -> int:
    """The kernels recompute softcap / temperature from the raw logits in each pass: no extra (C, V) buffer."""
    return 0
