"""Device-side row math shared by the row kernels and the fused kernels (``@triton.jit`` helpers).

The formulas are the ones documented in :mod:`xtf_kernels.ops.spec`; each helper works on a scalar row
or on a block of rows alike. No libdevice call is used (tanh is written with ``exp``), so the same code
runs under ``TRITON_INTERPRET=1``.

Logits transform: the raw GEMM output ``r`` becomes ``z = softcap(logit_scale * r) / T``. The kernels take
it as three fp32 constants formed once on the host in float64 (:func:`logit_transform`), so each logit
costs two multiplies and a tanh, each rounded once:

    with softcap s:  z = out_scale * tanh(tanh_scale * r),  tanh_scale = logit_scale / s,  out_scale = s / T
    without:         z = out_scale * r,                     out_scale = logit_scale / T
    dz/dr = slope_scale * (1 - tanh^2),                     slope_scale = logit_scale / T
"""

from __future__ import annotations

from typing import NamedTuple

import triton
import triton.language as tl

# Below this |x| tanh comes from an odd polynomial, above it from 1 - 2e / (1 + e), e = exp(-2|x|). Both
# closed forms lose the leading bits of 1 - e to cancellation for small |x|: e is rounded to ~6e-8
# absolute, and 1 - e ~ 2|x|, so at |x| = 1e-3 the relative error is ~3e-5, far above fp32's 6e-8 (what
# failed Liger's fp32 rtol of 1e-6 on softcapped gradients). From 0.625 up, 2e / (1 + e) <= 0.44 and the
# result is good to 1.7 ulp at most, 0.26 on average (measured against float64 over [0.625, 9] in steps
# of 4.5e-6 with NumPy's fp32 exp, as the interpreter runs it; (1 - e) / (1 + e) averages 0.52, NumPy's
# tanh 0.37; on a GPU tl.exp is ex2.approx.f32 after a multiply by log2 e, not measured here). At
# Gemma-2's s = 30 a logit near the row maximum (z ~ 25) carries that error into p = exp(z - max) / sum.
# The polynomial is Cephes' tanhf (0.77 ulp at most, 0.25 on average on [0.01, 0.625) by the same
# measurement).
_TANH_POLY_LIMIT = tl.constexpr(0.625)


class LogitTransform(NamedTuple):
    """The host-side constants of the logits transform (Python floats; see the module docstring)."""

    tanh_scale: float
    out_scale: float
    slope_scale: float
    has_softcap: bool


def logit_transform(spec) -> LogitTransform:
    """The constants of ``spec`` (a :class:`~xtf_kernels.ops.spec.HeadSpec`), each formed in float64 and
    rounded to fp32 once when passed to a kernel."""
    scale = float(spec.logit_scale)
    slope = scale * float(spec.inv_temperature)
    if spec.softcap > 0:
        return LogitTransform(scale / spec.softcap, spec.softcap * float(spec.inv_temperature), slope, True)
    return LogitTransform(0.0, slope, slope, False)


@triton.jit
def tanh_and_sech2(x):
    """(tanh x, 1 - tanh^2 x) in fp32, each to a few ulp for every x (never overflows).

    1 - tanh^2 is formed as 4 e / (1 + e)^2 with e = exp(-2|x|): no cancellation for large |x|, where
    1 - t * t would subtract two numbers near 1 (at |x| = 5, 1 - t^2 = 1.8e-4 would keep only ~3 digits).
    """
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    one_plus_e = 1.0 + e
    s = ax * ax
    poly = ((((-5.70498872745e-3 * s + 2.06390887954e-2) * s - 5.37397155531e-2) * s + 1.33314422036e-1) * s
            - 3.33332819422e-1) * s * ax + ax
    t = tl.where(ax < _TANH_POLY_LIMIT, poly, 1.0 - 2.0 * e / one_plus_e)
    t = tl.where(x < 0, -t, t)
    return t, 4.0 * e / (one_plus_e * one_plus_e)


@triton.jit
def final_logits(y, tanh_scale, out_scale, HAS_SOFTCAP: tl.constexpr):
    """z = softcap(logit_scale * y) / T in fp32, like ``y`` (constants from :func:`logit_transform`)."""
    if HAS_SOFTCAP:
        t, _ = tanh_and_sech2(y * tanh_scale)
        z = out_scale * t
    else:
        z = y * out_scale
    return z


@triton.jit
def final_logits_and_slope(y, tanh_scale, out_scale, slope_scale, HAS_SOFTCAP: tl.constexpr):
    """(z, slope): z as in :func:`final_logits` and slope = dz/dy, fp32 (slope a scalar without softcap)."""
    if HAS_SOFTCAP:
        t, sech2 = tanh_and_sech2(y * tanh_scale)
        z = out_scale * t
        slope = slope_scale * sech2
    else:
        z = y * out_scale
        slope = slope_scale  # a scalar: broadcasting it keeps a -inf logit from turning it into NaN
    return z, slope


@triton.jit
def finite_or_zero(running_max):
    """The running max, or 0 where it is still -inf (every logit so far -inf, e.g. vocabulary entries masked
    by a -inf bias): exponents are taken against it, so exp(-inf - 0) = 0 instead of exp(-inf + inf) = NaN."""
    return tl.where(running_max == float("-inf"), 0.0, running_max)


@triton.jit
def logit_where_probable(p, z):
    """z where p > 0, else 0: a -inf logit has p = 0, and its terms p z and p D z must be 0, not 0 * -inf = NaN."""
    return tl.where(p > 0, z, 0.0)


@triton.jit
def online_softmax_update(z, run_max, run_sum, run_shifted, axis: tl.constexpr, ENTROPY_STAT: tl.constexpr):
    """Merge a block of final logits ``z`` (-inf where padded) into the running statistics along ``axis``.

    run_sum = sum_j exp(z_j - shift) and run_shifted = sum_j exp(z_j - shift) (z_j - shift) with
    shift = finite_or_zero(run_max): the entropy is then log(run_sum) - run_shifted / run_sum. Keeping
    z - shift (not z) in the second sum keeps its terms O(1) at any logit size: with z ~ 1e4, sum p z is
    ~1e4 and lse - sum p z would lose ~1e-3 to rounding; this is the form csrc/xtf_row_math.h uses too.
    Returns (new_max, new_sum, new_shifted).
    """
    if axis == 0:
        new_max = tl.maximum(run_max, tl.max(z, 0))
        shift = finite_or_zero(new_max)
        e = tl.exp(z - shift)
    else:
        new_max = tl.maximum(run_max, tl.max(z, 1))
        shift = finite_or_zero(new_max)
        e = tl.exp(z - shift[:, None])
    old_shift = finite_or_zero(run_max)
    rescale = tl.exp(run_max - shift)  # 0 while run_max is -inf (then run_sum and run_shifted are 0 too)
    new_sum = run_sum * rescale + tl.sum(e, axis)
    new_shifted = run_shifted
    if ENTROPY_STAT:
        if axis == 0:
            block = tl.sum(e * logit_where_probable(e, z - shift), 0)
        else:
            block = tl.sum(e * logit_where_probable(e, z - shift[:, None]), 1)
        # sum exp(z - shift)(z - shift) = rescale * (old sum of exp(z - old)(z - old) + (old - shift) old sum)
        new_shifted = (run_shifted + (old_shift - shift) * run_sum) * rescale + block
    return new_max, new_sum, new_shifted


@triton.jit
def grad_coefficients(
    rows, row_mask, lse, log_norm, entropy, G_LOSS, G_LOGPROB, G_ENTROPY, G_LSE, z_loss, label_smoothing, vocab,
    target_weight, weight_mean,
    HAS_G_LOSS: tl.constexpr, HAS_G_LOGPROB: tl.constexpr, HAS_G_ENTROPY: tl.constexpr, HAS_G_LSE: tl.constexpr,
    HAS_CLASS_WEIGHTS: tl.constexpr,
):
    """A, B, C, D of ``dz_j = p_j (A + D (z_j - shift)) + B [j == t] + C w_j`` for ``rows`` (fp32, shaped like
    ``lse``), the spec's formula with the entropy term taken relative to the shift of :func:`raw_logit_grad`.

    log_norm: lse - shift (log of the row's sum of exp(z - max) when the row's statistics are at hand, so
    the entropy gradient's lse - entropy - z_j = log_norm - entropy - (z_j - shift) never subtracts two
    logit-sized numbers; 0 when shift = lse).
    G_*: (M,) fp32 upstream gradients of loss / logprob / entropy / lse (read only when HAS_G_*).
    target_weight: cw[t] per row and weight_mean: (1 / V) sum_j cw_j (read only with HAS_CLASS_WEIGHTS;
    without class weights w_j = 1 and A's loss term is g_loss (1 + 2 c lse), exactly as before).
    """
    zero = lse * 0.0
    coef_a = zero
    coef_b = zero
    coef_c = zero
    coef_d = zero
    if HAS_G_LOSS:
        g_loss = tl.load(G_LOSS + rows, mask=row_mask, other=0.0)
        if HAS_CLASS_WEIGHTS:
            nll_weight = (1.0 - label_smoothing) * target_weight
            coef_a = g_loss * (nll_weight + label_smoothing * weight_mean + 2.0 * z_loss * lse)
            coef_b = -nll_weight * g_loss
        else:
            coef_a = g_loss * (1.0 + 2.0 * z_loss * lse)
            coef_b = -(1.0 - label_smoothing) * g_loss
        coef_c = -g_loss * (label_smoothing / vocab)
    if HAS_G_LSE:
        coef_a += tl.load(G_LSE + rows, mask=row_mask, other=0.0)
    if HAS_G_LOGPROB:
        g_logprob = tl.load(G_LOGPROB + rows, mask=row_mask, other=0.0)
        coef_a -= g_logprob
        coef_b += g_logprob
    if HAS_G_ENTROPY:
        g_entropy = tl.load(G_ENTROPY + rows, mask=row_mask, other=0.0)
        coef_a += g_entropy * (log_norm - entropy)
        coef_d = -g_entropy
    return coef_a, coef_b, coef_c, coef_d


@triton.jit
def raw_logit_grad(z, slope, shift, scale, is_target, coef_a, coef_b, coef_c, coef_d, HAS_G_ENTROPY: tl.constexpr):
    """d loss / d y for raw logits y given final logits z, their slope dz/dy and the row coefficients
    (``coef_c`` already multiplied by the column's class weight when there are class weights).

    p = exp(z - shift) * scale: from the row's statistics shift = max, scale = 1 / sum exp(z - max), so
    z - shift is exact; from a known log-sum-exp shift = lse, scale = 1, and every p carries lse's fp32
    rounding (~|lse| 6e-8 relative: 6e-4 at logits ~1e4). csrc/xtf_row_math.h's SoftmaxNormalizer is the same.
    """
    shifted = z - shift
    p = tl.exp(shifted) * scale
    if HAS_G_ENTROPY:
        dz = p * (coef_a + coef_d * logit_where_probable(p, shifted))
    else:
        dz = p * coef_a
    dz = dz + coef_c + tl.where(is_target, coef_b, 0.0)
    return dz * slope
