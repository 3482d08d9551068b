"""Per-chunk row math in plain PyTorch: log-sum-exp, target logit, entropy and the in-place gradient.

This is the torch counterpart of the Triton row kernel and of ``csrc/xtf_row_math.h``; the formulas are
documented once in :mod:`xtf_kernels.ops.spec`.

Memory: the plain cross-entropy path (no softcap, no entropy gradient) works entirely in place in the
(C, V) fp32 logits buffer it is given. Softcap gradients and entropy need the logits after the softmax
has been formed, so those paths hold one more (C, V) fp32 buffer; :func:`extra_row_buffers` tells the
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
    """z <- softcap(z) / T in place (fp32)."""
    if spec.softcap > 0:
        z.mul_(1.0 / spec.softcap).tanh_().mul_(spec.softcap * spec.inv_temperature)
    elif spec.inv_temperature != 1.0:
        z.mul_(spec.inv_temperature)
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
):
    """One pass over a chunk of raw logits.

    Args:
        z: (C, V) fp32 raw logits (``hidden @ weight.T + bias``), overwritten.
        targets: (C,) int64 in [0, V).
        spec: logits transform and loss terms.
        want_entropy / want_mean_logit: compute those per-row statistics.
        grads: upstream per-row gradients; when given, the gradient with respect to the raw logits is
            written into the returned buffer (fp32, (C, V)).
        lse, entropy: (C,) fp32 from an earlier forward; when ``lse`` is given the max/sum pass is
            skipped (the backward of a recomputing op).

    Returns:
        (lse, target_logit, mean_logit | None, entropy | None, grad_logits | None)
    """
    vocab = z.shape[1]
    transform_logits_(z, spec)
    target_logit = z.gather(1, targets.unsqueeze(1)).squeeze(1)
    mean_logit = z.mean(1) if want_mean_logit else None
    keep_logits = want_entropy or (grads is not None and (spec.softcap > 0 or grads.entropy is not None))
    if lse is None:
        row_max = z.amax(1, keepdim=True)
        probs = torch.sub(z, row_max) if keep_logits else z.sub_(row_max)
        probs.exp_()
        sum_exp = probs.sum(1)
        lse = row_max.squeeze(1) + sum_exp.log()
        probs.mul_(sum_exp.reciprocal().unsqueeze(1))
    else:
        probs = torch.sub(z, lse.unsqueeze(1)) if keep_logits else z.sub_(lse.unsqueeze(1))
        probs.exp_()
    finite_z = z
    if want_entropy or (grads is not None and grads.entropy is not None):
        # A -inf logit (e.g. a vocabulary entry masked by a -inf bias) has p = 0 and contributes 0 to
        # sum p z and to p (A + D z); replacing it by 0 avoids 0 * -inf = NaN.
        finite_z = torch.where(probs > 0, z, torch.zeros((), dtype=z.dtype, device=z.device))
    if want_entropy or (grads is not None and grads.entropy is not None and entropy is None):
        entropy = lse - _row_dot(probs, finite_z)
    if grads is None:
        return lse, target_logit, mean_logit, entropy if want_entropy else None, None

    coef_a, coef_b, coef_c, coef_d = row_grad_coefficients(grads, spec, lse, entropy, vocab)
    if coef_d is not None:
        probs.mul_(torch.addcmul(coef_a.unsqueeze(1), finite_z, coef_d.unsqueeze(1)))
    else:
        probs.mul_(coef_a.unsqueeze(1))
    if coef_c is not None:
        probs.add_(coef_c.unsqueeze(1))
    probs.scatter_add_(1, targets.unsqueeze(1), coef_b.unsqueeze(1))
    if spec.softcap > 0:
        # d softcap(y)/dy = 1 - tanh^2 with tanh = z * T / s, recovered from the final logits z.
        tanh_scale = 1.0 / (spec.softcap * spec.inv_temperature)
        z.mul_(tanh_scale).square_().neg_().add_(1.0)
        probs.mul_(z).mul_(spec.inv_temperature)
    elif spec.inv_temperature != 1.0:
        probs.mul_(spec.inv_temperature)
    return lse, target_logit, mean_logit, entropy if want_entropy else None, probs


def row_grad_coefficients(grads: RowGrads, spec: HeadSpec, lse, entropy, vocab: int):
    """A, B, C, D of ``dz = p (A + D z) + B onehot + C`` per row (each (C,) fp32, C and D may be None)."""
    zero = torch.zeros_like(lse)
    g_loss = grads.loss if grads.loss is not None else zero
    coef_a = g_loss * (1.0 + 2.0 * spec.z_loss * lse) if spec.z_loss else g_loss.clone()
    coef_b = -(1.0 - spec.label_smoothing) * g_loss
    coef_c = -g_loss * (spec.label_smoothing / vocab) if spec.label_smoothing else None
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
