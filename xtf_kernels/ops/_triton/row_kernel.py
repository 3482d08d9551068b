"""The chunked path's row kernel: per-row statistics and the in-place logits gradient of one chunk.

Plugged into :func:`xtf_kernels.ops.engine.chunked_head_pass` as a :class:`~xtf_kernels.ops.engine.RowKernel`;
matches :func:`xtf_kernels.ops._torch.row_pass.row_pass` (same outputs, same formula from
:mod:`xtf_kernels.ops.spec`). One program per row reads the fp32 raw logits row once for an online
max / sum-exp (plus the shifted sum exp(z - max)(z - max) for the entropy, sum w z for the mean logit and
the first index of the maximum when asked), and once more to write the gradient with respect to the raw
logits, with logit scale, softcap, temperature, label smoothing, class weights, z-loss, the entropy
gradient and the per-row upstream gradients folded in; p comes from the row's own max and sum. When the
inputs are 16-bit the gradient is written straight into the 16-bit buffer the backward matmuls read, so
the chunk costs 2 fp32 reads + one 2-byte write per logit (the fp32 copy is written too only when the
bias gradient needs it). When the forward's log-sum-exp is given (the recomputing backward) the
statistics pass is skipped: one read, one write.

Row offsets are 64-bit: a chunk of C rows holds C * V logits, over 2^31 from C = 16744 at V = 128256.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..spec import HeadSpec
from ..spec import RowGrads
from .config import row_config
from .row_math import final_logits
from .row_math import final_logits_and_slope
from .row_math import finite_or_zero
from .row_math import grad_coefficients
from .row_math import logit_transform
from .row_math import online_softmax_update
from .row_math import raw_logit_grad


@triton.jit
def _row_kernel(
    Z, z_stride, GRAD_OUT, grad_out_stride, TARGETS, LSE_IN, ENTROPY_IN,
    G_LOSS, G_LOGPROB, G_ENTROPY, G_LSE, CLASS_WEIGHTS, CLASS_WEIGHT_SUM,
    LSE_OUT, TARGET_OUT, MEAN_OUT, ENTROPY_OUT, ARGMAX_OUT,
    vocab, tanh_scale, out_scale, slope_scale, label_smoothing, z_loss,
    HAS_SOFTCAP: tl.constexpr, STATS_PASS: tl.constexpr, HAS_LSE: tl.constexpr, HAS_ENTROPY: tl.constexpr,
    WANT_MEAN: tl.constexpr, ENTROPY_STAT: tl.constexpr, WANT_ARGMAX: tl.constexpr,
    HAS_G_LOSS: tl.constexpr, HAS_G_LOGPROB: tl.constexpr, HAS_G_ENTROPY: tl.constexpr, HAS_G_LSE: tl.constexpr,
    HAS_CLASS_WEIGHTS: tl.constexpr, WRITE_GRAD: tl.constexpr, WRITE_F32: tl.constexpr, WRITE_OUT: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    z_row = Z + row * z_stride
    cols = tl.arange(0, BLOCK_V)
    target = tl.load(TARGETS + row)
    target_logit = final_logits(tl.load(z_row + target).to(tl.float32), tanh_scale, out_scale, HAS_SOFTCAP)
    tl.store(TARGET_OUT + row, target_logit)

    if STATS_PASS:
        run_max = float("-inf")
        run_sum = 0.0
        run_shifted = 0.0  # sum_j exp(z_j - shift)(z_j - shift), for the entropy (see online_softmax_update)
        run_total = 0.0  # sum_j w_j z_j (w = 1 without class weights), for the mean logit
        run_arg = 0  # first index of the maximum (torch.argmax's tie rule); 0 when every logit is -inf
        for start in range(0, vocab, BLOCK_V):
            offs = start + cols
            mask = offs < vocab
            # Padding columns become -inf: out of the max and of the sums.
            z = final_logits(tl.load(z_row + offs, mask=mask, other=0.0), tanh_scale, out_scale, HAS_SOFTCAP)
            z = tl.where(mask, z, float("-inf"))
            if WANT_ARGMAX:
                # strictly greater: an equal maximum in a later block keeps the earlier index
                run_arg = tl.where(tl.max(z, 0) > run_max, start + tl.argmax(z, 0, tie_break_left=True), run_arg)
            if WANT_MEAN:
                if HAS_CLASS_WEIGHTS:
                    w = tl.load(CLASS_WEIGHTS + offs, mask=mask, other=0.0)
                    run_total += tl.sum(w * tl.where(mask, z, 0.0), 0)  # w = 0 on padding
                else:
                    run_total += tl.sum(tl.where(mask, z, 0.0), 0)
            run_max, run_sum, run_shifted = online_softmax_update(z, run_max, run_sum, run_shifted, 0, ENTROPY_STAT)
        computed_lse = run_max + tl.log(run_sum)
        computed_entropy = tl.log(run_sum) - run_shifted / run_sum
        if WANT_MEAN:
            tl.store(MEAN_OUT + row, run_total / vocab)
        if ENTROPY_STAT:
            tl.store(ENTROPY_OUT + row, computed_entropy)
        if WANT_ARGMAX:
            tl.store(ARGMAX_OUT + row, run_arg.to(tl.int64))
    if HAS_LSE:
        lse = tl.load(LSE_IN + row)
    else:
        lse = computed_lse
        tl.store(LSE_OUT + row, lse)

    if WRITE_GRAD:
        if HAS_G_ENTROPY:
            if HAS_ENTROPY:
                entropy = tl.load(ENTROPY_IN + row)
            else:
                entropy = computed_entropy
        else:
            entropy = lse
        target_weight = 1.0
        weight_mean = 1.0
        if HAS_CLASS_WEIGHTS:
            target_weight = tl.load(CLASS_WEIGHTS + target)
            weight_mean = tl.load(CLASS_WEIGHT_SUM) / vocab
        if STATS_PASS:
            # p from the row's own max and sum: exact at any logit size (see row_math.raw_logit_grad)
            shift = finite_or_zero(run_max)
            scale = 1.0 / run_sum
            log_norm = tl.log(run_sum)
        else:
            shift = lse
            scale = 1.0
            log_norm = 0.0
        coef_a, coef_b, coef_c, coef_d = grad_coefficients(
            row, True, lse, log_norm, entropy, G_LOSS, G_LOGPROB, G_ENTROPY, G_LSE, z_loss, label_smoothing, vocab,
            target_weight, weight_mean, HAS_G_LOSS, HAS_G_LOGPROB, HAS_G_ENTROPY, HAS_G_LSE, HAS_CLASS_WEIGHTS,
        )
        if WRITE_F32:
            # The loop below overwrites the row in place, and the thread that read z[target] above need not
            # be the one that writes it: a CTA barrier orders that read (already consumed by the store to
            # TARGET_OUT) before every write, whatever layouts the compiler picks (the CUDA kernel's
            # __syncthreads at the same point). One barrier per row: free next to 2 passes over V logits.
            tl.debug_barrier()
        out_row = GRAD_OUT + row * grad_out_stride
        for start in range(0, vocab, BLOCK_V):
            offs = start + cols
            mask = offs < vocab
            raw = tl.load(z_row + offs, mask=mask, other=0.0)
            z, slope = final_logits_and_slope(raw, tanh_scale, out_scale, slope_scale, HAS_SOFTCAP)
            col_c = coef_c
            if HAS_CLASS_WEIGHTS:
                col_c = coef_c * tl.load(CLASS_WEIGHTS + offs, mask=mask, other=0.0)
            grad = raw_logit_grad(z, slope, shift, scale, offs == target, coef_a, coef_b, col_c, coef_d,
                                  HAS_G_ENTROPY)
            # Each element is loaded and stored through the same offsets tensor and `grad` is elementwise in
            # `raw`, so the load and the store share one layout: a thread overwrites only what it read.
            if WRITE_F32:
                tl.store(z_row + offs, grad, mask=mask)
            if WRITE_OUT:
                tl.store(out_row + offs, grad.to(GRAD_OUT.dtype.element_ty), mask=mask)


def extra_row_buffers(spec: HeadSpec, *, want_entropy: bool, grads: RowGrads | None) -> int:
    """The kernel recomputes softcap / temperature from the raw logits in each pass: no extra (C, V) buffer."""
    return 0


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
    """One launch over a chunk of raw logits; the contract of :func:`xtf_kernels.ops._torch.row_pass.row_pass`.

    Args:
        z: (C, V) fp32 raw logits, rows contiguous; overwritten with the fp32 gradient when ``grads`` is
            given and ``keep_fp32_grad``.
        targets: (C,) int64 in [0, V).
        spec: logits transform (softcap, temperature, logit scale) and loss terms.
        grads: upstream per-row gradients, each (C,) fp32 or None.
        lse, entropy: (C,) fp32 from an earlier forward (skip the statistics pass when nothing else is
            wanted).
        grad_out: (C, V) fp16 / bf16 with unit column stride, or None: also receives the gradient, rounded.
        keep_fp32_grad: write the fp32 gradient over ``z`` (needed for the bias gradient, or when there is no
            ``grad_out``).
        want_argmax: also return the (C,) int64 index of the first maximal final logit (forces the
            statistics pass).
        class_weights: (V,) fp32 per-class weights cw of the loss, or None: the mean logit becomes
            (1 / V) sum_j cw_j z_j and the loss gradient follows the class-weighted formula of the op contract.

    Returns:
        (lse, target_logit, mean_logit | None, entropy | None, grad) with (C,) fp32 statistics; ``grad`` is
        ``z`` when the fp32 gradient was written, else ``grad_out``, or None without ``grads``; with
        ``want_argmax`` a sixth element, the (C,) int64 argmax.
    """
    rows, vocab = z.shape
    assert z.stride(1) == 1 and z.dtype == torch.float32
    f32 = dict(dtype=torch.float32, device=z.device)
    write_grad = grads is not None
    g_entropy = write_grad and grads.entropy is not None
    need_entropy_stat = (want_entropy or g_entropy) and entropy is None
    stats_pass = lse is None or want_mean_logit or need_entropy_stat or want_argmax
    lse_out = lse if lse is not None else torch.empty(rows, **f32)
    target_out = torch.empty(rows, **f32)
    mean_out = torch.empty(rows, **f32) if want_mean_logit else None
    entropy_out = entropy if entropy is not None else (torch.empty(rows, **f32) if need_entropy_stat else None)
    argmax_out = torch.empty(rows, dtype=torch.int64, device=z.device) if want_argmax else None
    write_f32 = write_grad and (keep_fp32_grad or grad_out is None)
    write_out = write_grad and grad_out is not None
    if write_out:
        assert grad_out.shape == z.shape and grad_out.stride(1) == 1
    grads = grads if write_grad else RowGrads()
    weight_sum = None
    if class_weights is not None:
        class_weights = class_weights.contiguous()
        weight_sum = class_weights.sum(dtype=torch.float32).reshape(1)  # on the device: no host sync
    dummy = target_out  # never read: the matching HAS_* / WRITE_* flag is off
    transform = logit_transform(spec)
    config = row_config(vocab)
    if rows:
        _row_kernel[(rows,)](
            z, z.stride(0), grad_out if write_out else dummy, grad_out.stride(0) if write_out else 0,
            targets, lse if lse is not None else dummy, entropy if entropy is not None else dummy,
            *(g if g is not None else dummy for g in (grads.loss, grads.logprob, grads.entropy, grads.lse)),
            class_weights if class_weights is not None else dummy, weight_sum if weight_sum is not None else dummy,
            lse_out, target_out, mean_out if mean_out is not None else dummy,
            entropy_out if entropy_out is not None else dummy, argmax_out if argmax_out is not None else targets,
            vocab, *transform[:3], float(spec.label_smoothing), float(spec.z_loss),
            HAS_SOFTCAP=transform.has_softcap, STATS_PASS=stats_pass, HAS_LSE=lse is not None,
            HAS_ENTROPY=entropy is not None, WANT_MEAN=want_mean_logit, ENTROPY_STAT=need_entropy_stat,
            WANT_ARGMAX=want_argmax,
            HAS_G_LOSS=grads.loss is not None, HAS_G_LOGPROB=grads.logprob is not None,
            HAS_G_ENTROPY=grads.entropy is not None, HAS_G_LSE=grads.lse is not None,
            HAS_CLASS_WEIGHTS=class_weights is not None,
            WRITE_GRAD=write_grad, WRITE_F32=write_f32, WRITE_OUT=write_out,
            BLOCK_V=config.block_v, num_warps=config.num_warps,
        )
    grad = None
    if write_grad:
        grad = z if write_f32 else grad_out
    result = (lse_out, target_out, mean_out, entropy_out if want_entropy else None, grad)
    return (*result, argmax_out) if want_argmax else result
