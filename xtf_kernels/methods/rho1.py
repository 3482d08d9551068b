"""RHO-1 selective language modelling (``methods.md`` section 3): train only on the tokens whose current
loss exceeds a reference model's loss the most.

Per step: the current per-token losses come from one fused lm_head pass over every labelled token
(:func:`xtf_kernels.linear_cross_entropy`, ``reduction="none"``, no logits stored); the excess loss
``current - reference`` (no gradient) picks the top ``keep_ratio`` of the batch's tokens; the loss is the
mean over the kept tokens. Its backward gives every dropped token an upstream gradient of exactly 0, and
the recomputing backward of ``reduction="none"`` compacts those rows away, so the second lm_head pass
runs over the kept rows only; there is no second full lm_head pass.

Selection across gradient-accumulation steps: the paper ranks over about 1M tokens, far more than one
micro-batch holds. An :class:`ExcessLossWindow` keeps the excess losses of the last ``capacity`` labelled
tokens seen; each micro-batch is then ranked against that window plus itself (the micro-batch keeps the
tokens that fall within the top ``keep_ratio`` of the pool), and joins the window. Within one optimizer step
the model does not change, so the excess losses of the step's earlier micro-batches are exactly comparable:
``capacity`` = the tokens of one accumulation window with :meth:`ExcessLossWindow.reset` at every optimizer
step ranks each micro-batch against its step; without the reset the window rolls over steps, and then the
kept share drifts: the model's losses fall as it learns, so later batches rank below the values the window
kept from earlier steps (a 16,384-token window rolled over one epoch of a tiny miniature cell, 24 problems,
batch 8, dropped 62% of the tokens at ``keep_ratio=0.6``, against 40% ranked per batch).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _validation as v
from ..functional import linear_cross_entropy
from ..ops.registry import check_backend_name
from ..select import topk_mask

SCOPES = ("global", "sample")


class ExcessLossWindow:
    """The excess losses of the last ``capacity`` labelled tokens (first in, first out), fp32 on CPU.

    Args:
        capacity: tokens kept, >= 1 (e.g. the labelled tokens of one accumulation window, or 2**20 for the
            paper's ~1M-token ranking: 4 MiB).
    """

    def __init__(self, capacity: int):
        v.check_int("capacity", capacity)
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.values = torch.zeros(0, dtype=torch.float32)

    def __len__(self) -> int:
        return self.values.numel()

    def reset(self) -> None:
        """Forget every value (e.g. at each optimizer step)."""
        self.values = torch.zeros(0, dtype=torch.float32)

    def select(self, excess: torch.Tensor, labelled: torch.Tensor, keep_ratio: float) -> torch.Tensor:
        """(...) bool: the labelled entries of ``excess`` within the top ``keep_ratio`` of the window plus
        themselves (exactly ``floor(keep_ratio * pool)`` entries of the pool, ties to the OLDER entry, the
        window's first); then the labelled values join the window."""
        current = excess[labelled].detach().float().cpu()
        pool = torch.cat([self.values, current])
        kept = topk_mask(pool, keep_ratio)[self.values.numel():]
        mask = torch.zeros(excess.shape, dtype=torch.bool)
        mask[labelled.cpu()] = kept
        self.values = pool[-self.capacity:].clone()
        return mask.to(excess.device)


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
    temperature: float = 1.0,
    window: ExcessLossWindow | None = None,
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
        temperature: T > 0; the loss is the cross-entropy of ``softcap(hidden @ weight.T + bias) / T`` (a model
            that divides its logits, or a sharper / flatter selection signal); ``ref_losses`` must be at the
            same temperature. Computed exactly as ``softcap_{s/T}((hidden @ weight.T + bias) / T)``.
        window: an :class:`ExcessLossWindow`: rank against the excess losses of earlier micro-batches too
            (only with scope "global"); the batch's values join it.

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
    temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
    if window is not None and (not isinstance(window, ExcessLossWindow) or scope != "global"):
        raise ValueError("window must be an ExcessLossWindow, used with scope='global'")
    if temperature != 1.0:
        # softcap_s(z) / T == softcap_{s/T}(z / T), and z / T == (hidden / T) @ W.T + bias / T: one fused pass
        hidden = hidden / temperature
        bias = None if bias is None else bias / temperature
        softcap = None if softcap is None else softcap / temperature
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
        if window is None:
            kept = topk_mask(excess, keep_ratio, valid=labelled, scope=scope)
        else:
            kept = window.select(excess, labelled, keep_ratio)
        count = kept.sum()
        # 1/|K| on kept tokens and exactly 0 elsewhere: the zero upstream gradients let the backward skip
        # the dropped rows entirely.
        token_weights = kept.float() / count.clamp(min=1)
    loss = (losses * token_weights).sum()
    return (loss, kept) if return_mask else loss


class Rho1Loss(nn.Module):
    """Holds the options of :func:`rho1_loss`; the lm_head weight and reference losses are arguments.

    ``window_tokens`` gives it an :class:`ExcessLossWindow` of that many tokens, shared by its calls (selection
    across gradient-accumulation steps; ``loss_fn.window.reset()`` at each optimizer step if wanted).

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
        temperature: float = 1.0,
        window_tokens: int | None = None,
    ):
        super().__init__()
        v.check_number("keep_ratio", keep_ratio, low=0.0, high=1.0)
        v.check_int("ignore_index", ignore_index)
        v.check_softcap(softcap)
        check_backend_name(backend)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        v.check_chunk_size(chunk_size)
        self.temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
        if window_tokens is not None and scope != "global":
            raise ValueError("window_tokens needs scope='global'")
        self.window = None if window_tokens is None else ExcessLossWindow(window_tokens)
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
            chunk_size=self.chunk_size, temperature=self.temperature, window=self.window,
        )

    def extra_repr(self) -> str:
        return (
            f"keep_ratio={self.keep_ratio}, ignore_index={self.ignore_index}, softcap={self.softcap}, "
            f"backend={self.backend!r}, scope={self.scope!r}, temperature={self.temperature}, "
            f"window_tokens={None if self.window is None else self.window.capacity}"
        )
