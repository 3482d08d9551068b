"""RHO-1 selective language modelling (``methods.md`` section 3): train only on the tokens whose current
loss exceeds a reference model's loss the most.

Per step: the current per-token losses come from one fused lm_head pass over every labelled token
(:func:`xtf_kernels.linear_cross_entropy`, ``reduction="none"``, no logits stored); the excess loss
``current - reference`` (no gradient) picks the top ``keep_ratio`` of the batch's tokens; the loss is the
mean over the kept tokens. Its backward gives every dropped token an upstream gradient of exactly 0, and
the recomputing backward of ``reduction="none"`` compacts those rows away, so the second lm_head pass
runs over the kept rows only; there is no second full lm_head pass.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _validation as v
from ..functional import linear_cross_entropy
from ..ops.registry import check_backend_name
from ..select import topk_mask

SCOPES = ("global", "sample")


def rho1_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ref_losses: torch.Tensor,
    *,
    keep_ratio: float = 0.6,
    ignore_index: int = -100,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    backend: str = "auto",
    return_mask: bool = False,
    scope: str = "global",
    chunk_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the ``keep_ratio`` tokens with the largest excess loss over the reference.

    With ``ce_i`` the current loss of labelled token i (targets != ignore_index) and ``ref_i`` its
    precomputed reference loss, the kept set K is :func:`xtf_kernels.select.topk_mask` of
    ``ce_i - ref_i`` (exactly floor(keep_ratio * n_labelled) tokens, ties to the lower flat index), and

        loss = (1 / |K|) * sum_{i in K} ce_i        (0 with zero gradients when K is empty)

    Gradients flow through the kept tokens only (dropped tokens' hidden gradient is exactly 0) and the
    selection itself carries none.

    Args:
        hidden: (..., H) float32 / bfloat16 / float16, the final hidden states (already shifted so that
            position t predicts ``targets[t]``).
        weight: (V, H), hidden's dtype: the lm_head weight. bias: (V,) or None.
        targets: (...) integer labels, ``ignore_index`` where not trained on (prompt, padding).
        ref_losses: (...) float, the reference model's per-token loss ``-log p_ref(targets)`` for the same
            tokens (values at ignored positions are not read).
        keep_ratio: fraction of the labelled tokens kept, in [0, 1] (the paper uses 0.6 to 0.7).
        ignore_index: label of tokens without a loss.
        softcap: logit softcap s > 0 (Gemma-2) or None.
        backend, chunk_size: as in :func:`xtf_kernels.linear_cross_entropy`.
        return_mask: also return the kept-token mask.
        scope: "global" (the batch top k of the paper) or "sample" (top k per row of (B, T) targets);
            see :func:`xtf_kernels.select.topk_mask`.

    Returns:
        () fp32 loss, or (loss, kept) with kept a (...) bool mask.
    """
    v.check_targets(targets, hidden)
    v.check_tensor("ref_losses", ref_losses)
    if not ref_losses.is_floating_point():
        raise TypeError(f"ref_losses must be a float tensor, got {ref_losses.dtype}")
    if ref_losses.shape != targets.shape:
        raise ValueError(f"ref_losses shape {tuple(ref_losses.shape)} must equal targets shape {tuple(targets.shape)}")
    if ref_losses.device != targets.device:
        raise ValueError(f"ref_losses is on {ref_losses.device} but targets is on {targets.device}")
    v.check_int("ignore_index", ignore_index)
    v.check_number("keep_ratio", keep_ratio, low=0.0, high=1.0)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    labelled = targets != ignore_index
    bad = int((labelled & ~torch.isfinite(ref_losses)).sum())
    if bad:
        raise ValueError(f"ref_losses has {bad} non-finite value(s) at labelled positions")

    losses = linear_cross_entropy(
        hidden, weight, targets, bias=bias, ignore_index=ignore_index, reduction="none", softcap=softcap,
        backend=backend, chunk_size=chunk_size,
    )
    with torch.no_grad():
        excess = torch.where(labelled, losses.detach() - ref_losses.float(), torch.zeros_like(losses))
        kept = topk_mask(excess, keep_ratio, valid=labelled, scope=scope)
        count = kept.sum()
        # 1/|K| on kept tokens and exactly 0 elsewhere: the zero upstream gradients let the backward skip
        # the dropped rows entirely.
        token_weights = kept.float() / count.clamp(min=1)
    loss = (losses * token_weights).sum()
    return (loss, kept) if return_mask else loss


class Rho1Loss(nn.Module):
    """Holds the options of :func:`rho1_loss`; the lm_head weight and reference losses are arguments.

    Example::

        loss_fn = Rho1Loss(keep_ratio=0.6)
        loss = loss_fn(hidden, model.lm_head.weight, labels, ref_losses)  # hidden (B, T, H), labels (B, T)
    """

    def __init__(
        self,
        *,
        keep_ratio: float = 0.6,
        ignore_index: int = -100,
        softcap: float | None = None,
        backend: str = "auto",
        scope: str = "global",
        chunk_size: int | None = None,
    ):
        super().__init__()
        v.check_number("keep_ratio", keep_ratio, low=0.0, high=1.0)
        v.check_int("ignore_index", ignore_index)
        v.check_softcap(softcap)
        check_backend_name(backend)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        v.check_chunk_size(chunk_size)
        self.keep_ratio = keep_ratio
        self.ignore_index = ignore_index
        self.softcap = softcap
        self.backend = backend
        self.scope = scope
        self.chunk_size = chunk_size

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        ref_losses: torch.Tensor,
        bias: torch.Tensor | None = None,
        return_mask: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """hidden (..., H), weight (V, H), targets (...), ref_losses (...) -> () fp32 (and the (...) mask)."""
        return rho1_loss(
            hidden, weight, targets, ref_losses, keep_ratio=self.keep_ratio, ignore_index=self.ignore_index,
            bias=bias, softcap=self.softcap, backend=self.backend, return_mask=return_mask, scope=self.scope,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return (
            f"keep_ratio={self.keep_ratio}, ignore_index={self.ignore_index}, softcap={self.softcap}, "
            f"backend={self.backend!r}, scope={self.scope!r}"
        )
