"""Device-side row math shared by the row kernels and the fused kernels (``@triton.jit`` helpers).

The formulas are the ones documented in :mod:`xtf_kernels.ops.spec`; each helper works on a scalar row
or on a block of rows alike. No libdevice call is used (tanh is written with ``exp``), so the same code
runs under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tanh(x):
    """tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) in (0, 1]: never overflows; absolute error
    about 1e-7, i.e. about s * 1e-7 on a softcapped logit (3e-6 at Gemma-2's s = 30)."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def final_logits(y, softcap, inv_temperature, HAS_SOFTCAP: tl.constexpr):
    """z = softcap(y) / T in fp32, like ``y``."""
    if HAS_SOFTCAP:
        z = (softcap * inv_temperature) * tanh(y / softcap)
    else:
        z = y * inv_temperature
    return z


@triton.jit
def final_logits_and_slope(y, softcap, inv_temperature, HAS_SOFTCAP: tl.constexpr):
    """(z, slope): z = softcap(y) / T and slope = dz/dy = (1 - tanh^2) / T, fp32 (slope a scalar without softcap)."""
    if HAS_SOFTCAP:
        t = tanh(y / softcap)
        z = (softcap * inv_temperature) * t
        slope = inv_temperature * (1.0 - t * t)
    else:
        z = y * inv_temperature
        slope = inv_temperature  # a scalar: broadcasting it keeps a -inf logit from turning it into NaN
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
def grad_coefficients(
    rows, row_mask, lse, entropy, G_LOSS, G_LOGPROB, G_ENTROPY, G_LSE, z_loss, label_smoothing, vocab,
    HAS_G_LOSS: tl.constexpr, HAS_G_LOGPROB: tl.constexpr, HAS_G_ENTROPY: tl.constexpr, HAS_G_LSE: tl.constexpr,
):
    """A, B, C, D of ``dz_j = p_j (A + D z_j) + B [j == t] + C`` for ``rows`` (fp32, shaped like ``lse``).

    G_*: (M,) fp32 upstream gradients of loss / logprob / entropy / lse (read only when HAS_G_*).
    """
    zero = lse * 0.0
    coef_a = zero
    coef_b = zero
    coef_c = zero
    coef_d = zero
    if HAS_G_LOSS:
        g_loss = tl.load(G_LOSS + rows, mask=row_mask, other=0.0)
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
        coef_a += g_entropy * (lse - entropy)
        coef_d = -g_entropy
    return coef_a, coef_b, coef_c, coef_d


@triton.jit
def raw_logit_grad(z, slope, lse, is_target, coef_a, coef_b, coef_c, coef_d, HAS_G_ENTROPY: tl.constexpr):
    """d loss / d y for raw logits y given final logits z, their slope dz/dy and the row coefficients."""
    p = tl.exp(z - lse)
    if HAS_G_ENTROPY:
        dz = p * (coef_a + coef_d * logit_where_probable(p, z))
    else:
        dz = p * coef_a
    dz = dz + coef_c + tl.where(is_target, coef_b, 0.0)
    return dz * slope
