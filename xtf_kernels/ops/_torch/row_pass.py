"""Per-chunk row math in plain PyTorch: log-sum-exp, target logit, entropy and the in-place gradient.

This is the torch counterpart of the Triton row kernel and of ``csrc/xtf_row_math.h``; the formulas are
documented once in :mod:`xtf_kernels.ops.spec`. It runs in the dtype of the logits it is given (fp32, or
float64 for float64 inputs).

Memory: the plain cross-entropy path (no softcap, no entropy gradient) works entirely in place in the
(C, V) logits buffer it is given. Softcap gradients and entropy need the logits after the softmax
has been formed, so those paths hold one more (C, V) buffer; :func:`extra_row_buffers` tells the
chunk-size arithmetic how many.
"""

from __future__ import annotations

import torch

from ..spec import HeadSpec
from ..spec import RowGrads


def extra_row_buffers(spec: HeadSpec, *, want_entropy: bool, grads: RowGrads | None) -> int:
    """How many (C, V) fp32 buffers :func:`row_pass` allocates besides the logits it is given."""
    keeps_logits = want_entropy or (grads is not None and spec.softcap > 0)
    entropy_terms = want_entropy or (grads is not None and grads.entropy is not None)
    entropy_grad = grads is not None and grads.entropy is not None
    return int(keeps_logits) + int(entropy_terms) + int(entropy_grad)


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_j a_ij b_ij per row without a (C, V) temporary (a batched 1 x V @ V x 1 product)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def transform_logits_(z: torch.Tensor, spec: HeadSpec) -> torch.Tensor:
    """z <- softcap(logit_scale * z) / T in place.

    The logit scale is folded into the softcap's 1 / s (or into 1 / T without softcap), so it costs no
    extra pass; torch's tanh is exact to rounding for small arguments too (no (1 - e) / (1 + e) form).
    """
    if spec.softcap > 0:
        z.mul_(spec.logit_scale / spec.softcap).tanh_().mul_(spec.softcap * spec.inv_temperature)
    elif spec.inv_temperature * spec.logit_scale != 1.0:
        z.mul_(spec.logit_scale * spec.inv_temperature)
    return z


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
    want_argmax: bool = False,
    class_weights: torch.Tensor | None = None,
):
    """One pass over a chunk of raw logits.

    Args:
        z: (C, V) fp32 (or float64) raw logits (``hidden @ weight.T + bias``), overwritten.
        targets: (C,) int64 in [0, V).
        spec: logits transform and loss terms.
        want_entropy / want_mean_logit: compute those per-row statistics (the mean is class-weighted when
            ``class_weights`` is given).
        grads: upstream per-row gradients; when given, the gradient with respect to the raw logits is
            written into the returned buffer ((C, V), z's dtype).
        lse, entropy: (C,) from an earlier forward; when ``lse`` is given the max/sum pass is skipped (the
            backward of a recomputing op).
        want_argmax: also return the (C,) int64 index of the first maximal final logit.
        class_weights: (V,) in z's dtype, the ``weight=`` of ``F.cross_entropy``, or None.

    Returns:
        (lse, target_logit, mean_logit | None, entropy | None, grad_logits | None), plus a sixth element,
        argmax (C,) int64, when ``want_argmax`` is passed.
    """
    vocab = z.shape[1]
    transform_logits_(z, spec)
    target_logit = z.gather(1, targets.unsqueeze(1)).squeeze(1)
    argmax = z.argmax(1) if want_argmax else None
    mean_logit = None
    if want_mean_logit:
        mean_logit = z.mean(1) if class_weights is None else torch.mv(z, class_weights).div_(vocab)
    keep_logits = want_entropy or (grads is not None and (spec.softcap > 0 or grads.entropy is not None))
    # exps holds exp(z - shift); p = exps * norm. The normalisation is never a pass of its own: it is folded
    # into the entropy's row sum and into the gradient coefficients (norm is None when the saved lse is the
    # shift, so exps is p already).
    norm = None
    if lse is None:
        row_max = z.amax(1, keepdim=True)
        exps = torch.sub(z, row_max) if keep_logits else z.sub_(row_max)
        exps.exp_()
        sum_exp = exps.sum(1)
        lse = row_max.squeeze(1) + sum_exp.log()
        norm = sum_exp.reciprocal()
    else:
        exps = torch.sub(z, lse.unsqueeze(1)) if keep_logits else z.sub_(lse.unsqueeze(1))
        exps.exp_()
    finite_z = z
    if want_entropy or (grads is not None and grads.entropy is not None):
        # A -inf logit (e.g. a vocabulary entry masked by a -inf bias) has p = 0 and contributes 0 to
        # sum p z and to p (A + D z); replacing it by 0 avoids 0 * -inf = NaN.
        finite_z = torch.where(exps > 0, z, torch.zeros((), dtype=z.dtype, device=z.device))
    if want_entropy or (grads is not None and grads.entropy is not None and entropy is None):
        weighted = _row_dot(exps, finite_z)
        entropy = lse - (weighted if norm is None else weighted * norm)
    stats = (lse, target_logit, mean_logit, entropy if want_entropy else None)
    if grads is None:
        return (*stats, None, argmax) if want_argmax else (*stats, None)

    target_weight = None if class_weights is None else class_weights[targets]
    coef_a, coef_b, coef_c, coef_d = row_grad_coefficients(grads, spec, lse, entropy, vocab, target_weight,
                                                            class_weights)
    # The chain factor to the raw logits, logit_scale / T (times 1 - tanh^2 with softcap, below), and the
    # normalisation of p are per-row scalars: folded into the coefficients, not passes over the chunk.
    chain = spec.inv_temperature * spec.logit_scale
    p_scale = chain if norm is None else norm * chain
    coef_a, coef_b = coef_a * p_scale, coef_b * chain
    coef_c = None if coef_c is None else coef_c * chain
    grad = exps
    if coef_d is not None:
        grad.mul_(torch.addcmul(coef_a.unsqueeze(1), finite_z, (coef_d * p_scale).unsqueeze(1)))
    else:
        grad.mul_(coef_a.unsqueeze(1))
    if coef_c is not None:
        if class_weights is None:
            grad.add_(coef_c.unsqueeze(1))
        else:
            grad.addr_(coef_c, class_weights)  # C_j = c_row * w_j, without a (C, V) temporary
    grad.scatter_add_(1, targets.unsqueeze(1), coef_b.unsqueeze(1))
    if spec.softcap > 0:
        # d softcap(a y)/dy = a (1 - tanh^2) with tanh = z * T / s, recovered from the final logits z (the factor
        # a / T is in the coefficients already).
        tanh_scale = 1.0 / (spec.softcap * spec.inv_temperature)
        grad.mul_(z.square_().mul_(-tanh_scale * tanh_scale).add_(1.0))
    return (*stats, grad, argmax) if want_argmax else (*stats, grad)


def row_grad_coefficients(grads: RowGrads, spec: HeadSpec, lse, entropy, vocab: int, target_weight=None,
                          class_weights=None):
    """A, B, C, D of ``dz = p (A + D z) + B onehot + C`` per row (each (C,), C and D may be None).

    With ``class_weights`` (V,) and ``target_weight`` = w_t (C,), C is the per-row factor ``-g_loss eps / V``
    that multiplies w_j; without them it is the whole (row-constant) C.
    """
    zero = torch.zeros_like(lse)
    eps = spec.label_smoothing
    g_loss = grads.loss if grads.loss is not None else zero
    weighted_loss = g_loss if target_weight is None else g_loss * target_weight
    # d loss / d lse = (1 - eps) w_t + eps S / V + 2 c lse; S / V = 1 without class weights.
    smoothing_mass = 1.0 if class_weights is None else class_weights.sum() / vocab
    coef_a = (1.0 - eps) * weighted_loss + eps * smoothing_mass * g_loss
    if spec.z_loss:
        coef_a = coef_a + g_loss * (2.0 * spec.z_loss * lse)
    coef_b = -(1.0 - eps) * weighted_loss
    coef_c = -g_loss * (eps / vocab) if eps else None
    coef_d = None
    if grads.lse is not None:
        coef_a = coef_a + grads.lse
    if grads.logprob is not None:
        coef_a = coef_a - grads.logprob
        coef_b = coef_b + grads.logprob
    if grads.entropy is not None:
        coef_a = coef_a + grads.entropy * (lse - entropy)
        coef_d = -grads.entropy
    return coef_a, coef_b, coef_c, coef_d
