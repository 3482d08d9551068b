"""``nn.Module`` form of the fused loss."""

from __future__ import annotations

import torch
from torch import nn

from . import _validation as v
from .functional import LinearCrossEntropyOutput
from .functional import linear_cross_entropy
from .ops.registry import check_backend_name


class LinearCrossEntropyLoss(nn.Module):
    """Holds the options of :func:`xtf_kernels.linear_cross_entropy`; the lm_head weight is an argument.

    ``class_weights`` (V,) is registered as a buffer, so it follows ``.to(device)`` and is saved in the
    ``state_dict``; the other options are plain attributes. ``max_kept_tokens`` selects the sync-free mode
    for CUDA graphs (see :mod:`xtf_kernels.functional`).

    Example::

        loss_fn = LinearCrossEntropyLoss(ignore_index=-100, z_loss=1e-4, shift=True)
        loss = loss_fn(hidden, model.lm_head.weight, input_ids)   # hidden (B, T, H), input_ids (B, T)
    """

    def __init__(
        self,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        softcap: float | None = None,
        logit_scale: float = 1.0,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        class_weights: torch.Tensor | None = None,
        shift: bool | int = False,
        return_z_loss: bool = False,
        return_token_accuracy: bool = False,
        return_predicted_tokens: bool = False,
        backend: str = "auto",
        chunk_size: int | None = None,
        max_kept_tokens: int | None = None,
    ):
        super().__init__()
        v.check_int("ignore_index", ignore_index)
        v.check_reduction(reduction)
        v.check_softcap(softcap)
        v.check_logit_scale(logit_scale)
        v.check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        v.check_number("z_loss", z_loss, low=0.0)
        if class_weights is not None:
            v.check_tensor("class_weights", class_weights, dims=1)
            if not class_weights.is_floating_point():
                raise TypeError(f"class_weights must be a floating-point tensor, got {class_weights.dtype}")
        v.check_shift(shift)
        check_backend_name(backend)
        v.check_chunk_size(chunk_size)
        v.check_max_kept_tokens(max_kept_tokens)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.softcap = softcap
        self.logit_scale = logit_scale
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.register_buffer("class_weights", None if class_weights is None else class_weights.detach().clone())
        self.shift = shift
        self.return_z_loss = return_z_loss
        self.return_token_accuracy = return_token_accuracy
        self.return_predicted_tokens = return_predicted_tokens
        self.backend = backend
        self.chunk_size = chunk_size
        self.max_kept_tokens = max_kept_tokens

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        token_weights: torch.Tensor | None = None,
        num_items_in_batch: int | float | torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor | LinearCrossEntropyOutput:
        """hidden (..., H), weight (V, H), targets (...), token_weights (...) -> () or (...) fp32, or a
        :class:`~xtf_kernels.LinearCrossEntropyOutput` when a ``return_*`` option is set."""
        return linear_cross_entropy(
            hidden, weight, targets, bias=bias, token_weights=token_weights, class_weights=self.class_weights,
            ignore_index=self.ignore_index, reduction=self.reduction, num_items_in_batch=num_items_in_batch,
            softcap=self.softcap, logit_scale=self.logit_scale, label_smoothing=self.label_smoothing,
            z_loss=self.z_loss, shift=self.shift, return_z_loss=self.return_z_loss,
            return_token_accuracy=self.return_token_accuracy, return_predicted_tokens=self.return_predicted_tokens,
            backend=self.backend, chunk_size=self.chunk_size, max_kept_tokens=self.max_kept_tokens,
        )

    def extra_repr(self) -> str:
        parts = [
            f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}", f"softcap={self.softcap}",
            f"label_smoothing={self.label_smoothing}", f"z_loss={self.z_loss}", f"backend={self.backend!r}",
        ]
        if self.logit_scale != 1.0:
            parts.append(f"logit_scale={self.logit_scale}")
        if self.class_weights is not None:
            parts.append(f"class_weights=({self.class_weights.shape[0]},)")
        if self.shift:
            parts.append(f"shift={self.shift!r}")
        if self.max_kept_tokens is not None:
            parts.append(f"max_kept_tokens={self.max_kept_tokens}")
        return ", ".join(parts)
