"""The fused path: a whole head pass in which the logits never reach memory (extra memory O(N + V) for the
statistics, plus the fp32 d_hidden accumulator described in :mod:`.fused_backward`)."""

from __future__ import annotations

import torch

from ..spec import HeadPassRequest
from ..spec import HeadPassResult
from ..spec import HeadSpec
from .config import FusedConfig
from .fused_backward import fused_gradients
from .fused_forward import fused_statistics
from .fused_forward import fused_target_logits


def fused_head_pass(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    spec: HeadSpec,
    request: HeadPassRequest,
    config: FusedConfig | None = None,
) -> HeadPassResult:
    """The contract of :func:`xtf_kernels.ops.engine.chunked_head_pass`, without chunks.

    Args:
        hidden: (M, H) fp32 / bf16 / fp16, any strides; weight: (V, H) same dtype; bias: (V,) or None.
        targets: (M,) int64 in [0, V).
        request: :class:`~xtf_kernels.ops.spec.HeadPassRequest` (its ``chunk_size`` is not used). With a saved
            ``lse`` and nothing else to compute, the forward pass is skipped (only the O(M H) target logits are
            formed); the argmax needs the forward pass; ``class_weights`` (V,) fp32 contiguous.
        config: tiles of the fused kernels (default :func:`~xtf_kernels.ops._triton.config.fused_config`).

    Returns:
        :class:`~xtf_kernels.ops.spec.HeadPassResult`: (M,) fp32 statistics, grad_hidden (M, H) in hidden's
        dtype, grad_weight (V, H) and grad_bias (V,) fp32.
    """
    want_grad = request.wants_grad
    grads = request.grads if want_grad else None
    want_entropy, want_mean_logit, want_argmax = request.want_entropy, request.want_mean_logit, request.want_argmax
    lse, entropy, class_weights = request.lse, request.entropy, request.class_weights
    need_entropy_stat = (want_entropy or (want_grad and grads.entropy is not None)) and entropy is None
    mean_logit = argmax = normalizer = None
    forward_tiles = None if config is None else config.forward
    if lse is None or want_mean_logit or need_entropy_stat or want_argmax:
        stats = fused_statistics(
            hidden, weight, bias, targets, spec, want_entropy=need_entropy_stat, want_mean_logit=want_mean_logit,
            want_argmax=want_argmax, class_weights=class_weights, config=forward_tiles,
        )
        if lse is None:  # the backward below takes p from this forward's max and sum: exact at any logit size
            lse, normalizer = stats.lse, (stats.shift, stats.log_norm)
        entropy = stats.entropy if entropy is None else entropy
        target_logit, mean_logit, argmax = stats.target_logit, stats.mean_logit, stats.argmax
    else:
        target_logit = fused_target_logits(hidden, weight, bias, targets, spec, forward_tiles)
    grad_hidden = grad_weight = grad_bias = None
    if want_grad:
        grad_hidden, grad_weight, grad_bias = fused_gradients(
            hidden, weight, bias, targets, spec, grads, lse, entropy,
            need_grad_hidden=request.need_grad_hidden, need_grad_weight=request.need_grad_weight,
            need_grad_bias=request.need_grad_bias,
            class_weights=class_weights, normalizer=normalizer, config=config,
        )
    return HeadPassResult(
        lse, target_logit, mean_logit, entropy if want_entropy else None, grad_hidden, grad_weight, grad_bias, argmax
    )
