"""Held-out loss of a causal LM through the fused loss (the clean held-out NLL of the demo and the benchmark).

Training itself is :func:`xtf_kernels.methods.finetune`, whose loss is :func:`xtf_kernels.linear_cross_entropy`
on the final hidden states and the lm_head weight (tokens a method dropped have label -100 and cost no lm_head
compute).
"""

from __future__ import annotations

import torch

from ..datasets import IGNORE_INDEX
from ..datasets import TokenizedSample
from ..datasets import collate
from ..methods import causal_lm_loss


@torch.no_grad()
def heldout_loss(model, samples: list[TokenizedSample], *, batch_size: int = 64) -> float:
    """Mean next-token loss over every labelled token of ``samples`` (the fused loss, reduction "sum")."""
    device = next(model.parameters()).device
    pad = int(getattr(model.config, "pad_token_id", None) or 0)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(samples), batch_size):
            batch = collate(samples[start : start + batch_size], pad).to(device)
            total += float(causal_lm_loss(model, batch, reduction="sum"))
            count += int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total / count if count else 0.0
