"""A drop-in for Liger-Kernel's fused linear cross-entropy, computed by :func:`xtf_kernels.linear_cross_entropy`.

Swap the import and nothing else changes::

    # from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    from xtf_kernels.integrations.liger import LigerFusedLinearCrossEntropyLoss

    loss_fn = LigerFusedLinearCrossEntropyLoss(ignore_index=-100, lse_square_scale=1e-4, softcap=30.0)
    loss = loss_fn(lm_head.weight, hidden.view(-1, H), labels.view(-1), lm_head.bias)

Same constructor options, same ``forward(lin_weight, _input, target, bias=None)`` (and
:func:`liger_fused_linear_cross_entropy`, the functional form, with Liger's argument order), same results
(Liger-Kernel's own test cases run against it, ``tests/integrations/test_liger.py``). Option mapping:

========================== =====================================================================================
Liger option                xtf_kernels
========================== =====================================================================================
``ce_weight`` (V,)          ``class_weights`` (``F.cross_entropy(weight=)`` semantics, label smoothing included)
``ignore_index``            ``ignore_index``
``lse_square_scale``        ``z_loss`` (c * lse^2 per kept token). Liger's "mean" divides this term by the
                            number of kept tokens even with ``ce_weight`` (the cross-entropy part by the sum
                            of the targets' class weights); reproduced, with one extra pass for the lse when
                            both are set
``label_smoothing``         ``label_smoothing``
``reduction``               "mean" / "sum" / "none", as Liger (mean over kept tokens, or over their class
                            weights); with no kept token the mean is 0.0, not Liger's NaN
``softcap``                 ``softcap``
``return_z_loss``           ``return_z_loss``: the z-loss term, reduced like Liger's
``accum_dtype``             None or ``torch.float32`` (xtf accumulates every gradient in fp32 anyway);
                            anything else is a ValueError
``use_token_scaling``       each token's loss times its detached p(target) (one forward-only pass for p),
                            divided by the unscaled count, as Liger
``return_token_accuracy``   ``return_token_accuracy`` (argmax == target over kept tokens; per token for
                            "none")
``return_predicted_tokens`` ``return_predicted_tokens`` (first maximal index); -1 at ignored tokens, as Liger
========================== =====================================================================================

With any ``return_*`` option the result is xtf's ``LinearCrossEntropyOutput`` named tuple, whose fields
(``loss``, ``z_loss``, ``token_accuracy``, ``predicted_tokens``) read like Liger's ``CrossEntropyOutput``.
Extra keyword-only options: ``backend`` and ``chunk_size`` (see :func:`xtf_kernels.linear_cross_entropy`).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _validation as v
from ..functional import linear_cross_entropy
from ..functional import token_logprobs

__all__ = ["LigerFusedLinearCrossEntropyLoss", "liger_fused_linear_cross_entropy"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_options(ce_weight, label_smoothing, reduction, softcap, accum_dtype, flags: dict) -> None:
    if ce_weight is not None and not isinstance(ce_weight, torch.Tensor):
        raise TypeError(f"ce_weight must be a (V,) floating-point tensor or None, got {type(ce_weight).__name__}")
    v.check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if softcap is not None:
        v.check_number("softcap", softcap, low=0.0, low_open=True)
    if accum_dtype not in (None, torch.float32):
        raise ValueError(
            f"accum_dtype must be None or torch.float32, got {accum_dtype}: xtf_kernels accumulates the weight and "
            "bias gradients in fp32 for every input dtype"
        )
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")


def liger_fused_linear_cross_entropy(
    input: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    ce_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    lse_square_scale: float = 0.0,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    softcap: float | None = None,
    return_z_loss: bool = False,
    accum_dtype: torch.dtype | None = None,
    use_token_scaling: bool = False,
    return_token_accuracy: bool = False,
    return_predicted_tokens: bool = False,
    *,
    backend: str = "auto",
    chunk_size: int | None = None,
):
    """Liger's ``liger_fused_linear_cross_entropy`` (same arguments and order) on xtf's ops.

    Args:
        input: (BT, H) (any leading shape works); weight: (V, H); target: (BT,) int; bias: (V,) or None.
        ce_weight: (V,) float class weights or None; the other options as in the module docstring.

    Returns:
        () fp32 loss ("mean" / "sum") or (BT,) fp32 ("none"); with any ``return_*`` a
        ``LinearCrossEntropyOutput(loss, z_loss, token_accuracy, predicted_tokens)``.
    """
    flags = dict(return_z_loss=return_z_loss, use_token_scaling=use_token_scaling,
                 return_token_accuracy=return_token_accuracy, return_predicted_tokens=return_predicted_tokens)
    _check_options(ce_weight, label_smoothing, reduction, softcap, accum_dtype, flags)
    common = dict(bias=bias, ignore_index=ignore_index, softcap=softcap, backend=backend, chunk_size=chunk_size)
    kept = target != ignore_index
    scaling = None
    if use_token_scaling:
        with torch.no_grad():
            scaling = token_logprobs(input, weight, target, **common).exp()  # p(target), 0 where ignored
    split_z = bool(lse_square_scale) and ce_weight is not None and reduction == "mean"
    out = linear_cross_entropy(
        input, weight, target, token_weights=scaling, class_weights=ce_weight, reduction="none",
        label_smoothing=label_smoothing, z_loss=0.0 if split_z else lse_square_scale,
        return_z_loss=True, return_token_accuracy=return_token_accuracy,
        return_predicted_tokens=return_predicted_tokens, **common,
    )
    per_token, z_per_token = out.loss, out.z_loss
    if split_z:
        # Liger divides the z-loss term by the kept-token count and the cross-entropy by the class-weight sum,
        # so the z-loss needs its own differentiable lse.
        lse = token_logprobs(input, weight, target, return_lse=True, **common).lse
        z_per_token = lse_square_scale * lse.square()
        if scaling is not None:
            z_per_token = z_per_token * scaling
        z_per_token = z_per_token.masked_fill(~kept, 0.0)
    count = kept.sum()
    if reduction == "none":
        loss, z_loss = per_token, z_per_token
    elif reduction == "sum":
        loss, z_loss = per_token.sum(), z_per_token.sum()
    else:
        denominator = count if ce_weight is None else ce_weight.float()[target[kept]].sum()
        z_loss = z_per_token.sum() / count.clamp(min=1)
        if split_z:
            loss = _safe_divide(per_token.sum(), denominator) + z_loss
        else:
            loss = _safe_divide(per_token.sum(), denominator)
    if not (return_z_loss or return_token_accuracy or return_predicted_tokens):
        return loss
    accuracy = out.token_accuracy
    if accuracy is not None and reduction != "none":
        accuracy = accuracy.sum() / count.clamp(min=1) if accuracy.dim() else accuracy
    predicted = out.predicted_tokens
    if predicted is not None:
        predicted = predicted.masked_fill(~kept.reshape(predicted.shape), -1)
    return out._replace(
        loss=loss, z_loss=z_loss.detach() if return_z_loss else None, token_accuracy=accuracy,
        predicted_tokens=predicted,
    )


def _safe_divide(total: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """total / denominator, 0.0 when nothing was kept (denominator 0) instead of Liger's NaN."""
    return torch.where(denominator > 0, total / denominator.clamp(min=torch.finfo(torch.float32).tiny), 0.0)


class LigerFusedLinearCrossEntropyLoss(nn.Module):
    """Liger's ``LigerFusedLinearCrossEntropyLoss``: same constructor options, same ``forward(lin_weight, _input,
    target, bias=None)``; see the module docstring for the option mapping."""

    def __init__(
        self,
        ce_weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        lse_square_scale: float = 0.0,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        softcap: float | None = None,
        return_z_loss: bool = False,
        accum_dtype: torch.dtype | None = None,
        use_token_scaling: bool = False,
        return_token_accuracy: bool = False,
        return_predicted_tokens: bool = False,
        *,
        backend: str = "auto",
        chunk_size: int | None = None,
    ):
        super().__init__()
        flags = dict(return_z_loss=return_z_loss, use_token_scaling=use_token_scaling,
                     return_token_accuracy=return_token_accuracy, return_predicted_tokens=return_predicted_tokens)
        _check_options(ce_weight, label_smoothing, reduction, softcap, accum_dtype, flags)
        self.ce_weight = ce_weight
        self.ignore_index = ignore_index
        self.lse_square_scale = lse_square_scale
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.softcap = softcap
        self.return_z_loss = return_z_loss
        self.accum_dtype = accum_dtype
        self.use_token_scaling = use_token_scaling
        self.return_token_accuracy = return_token_accuracy
        self.return_predicted_tokens = return_predicted_tokens
        self.backend = backend
        self.chunk_size = chunk_size

    def forward(self, lin_weight: torch.Tensor, _input: torch.Tensor, target: torch.Tensor, bias=None):
        return liger_fused_linear_cross_entropy(
            _input, lin_weight, target, bias, self.ce_weight, self.ignore_index, self.lse_square_scale,
            self.label_smoothing, self.reduction, self.softcap, self.return_z_loss, self.accum_dtype,
            self.use_token_scaling, self.return_token_accuracy, self.return_predicted_tokens,
            backend=self.backend, chunk_size=self.chunk_size,
        )
