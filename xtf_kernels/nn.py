"""``nn.Module`` form of the fused loss."""

from __future__ import annotations

import torch
from torch import nn

from . import _validation as v
from .functional import linear_cross_entropy
from .ops.registry import check_backend_name


class LinearCrossEntropyLoss(nn.Module):
    """Holds the options of :func:`xtf_kernels.linear_cross_entropy`; the lm_head weight is an argument.

    Example::

        loss_fn = LinearCrossEntropyLoss(ignore_index=-100, z_loss=1e-4)
        loss = loss_fn(hidden, model.lm_head.weight, labels)   # hidden (B, T, H), labels (B, T)
    """

    def __init__(
        self,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        softcap: float | None = None,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        backend: str = "auto",
        chunk_size: int | None = None,
    ):
        super().__init__()
        v.check_int("ignore_index", ignore_index)
        v.check_reduction(reduction)
        v.check_softcap(softcap)
        v.check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        v.check_number("z_loss", z_loss, low=0.0)
        check_backend_name(backend)
        v.check_chunk_size(chunk_size)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.softcap = softcap
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.backend = backend
        self.chunk_size = chunk_size

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        token_weights: torch.Tensor | None = None,
        num_items_in_batch: int | float | torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden (..., H), weight (V, H), targets (...), token_weights (...) -> () or (...) fp32."""
        return linear_cross_entropy(
            hidden, weight, targets, bias=bias, token_weights=token_weights, ignore_index=self.ignore_index,
            reduction=self.reduction, num_items_in_batch=num_items_in_batch, softcap=self.softcap,
            label_smoothing=self.label_smoothing, z_loss=self.z_loss, backend=self.backend,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, softcap={self.softcap}, "
            f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, backend={self.backend!r}"
        )
