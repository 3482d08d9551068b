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
def heldout_loss(model, samples: list[TokenizedSample], *, batch_size: int = 64) -> tuple[float, list[float]]:
    """(mean next-token loss over every labelled token of ``samples``, per sample the mean loss over its own
    labelled tokens), through the fused loss (reduction "none": (B, L - 1) fp32, 0 at unlabelled positions).
    The per-sample means pair two models problem by problem; the first number weighs every token alike (a long
    response counts more). Every sample needs a labelled token (ValueError naming the first that has none)."""
    device = next(model.parameters()).device
    pad = int(getattr(model.config, "pad_token_id", None) or 0)
    total, count, per_sample = 0.0, 0, []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(samples), batch_size):
            batch = collate(samples[start : start + batch_size], pad).to(device)
            losses = causal_lm_loss(model, batch, reduction="none").double()
            labelled = (batch.labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
            if not bool(labelled.all()):
                index = start + int((labelled == 0).nonzero()[0])
                raise ValueError(f"samples[{index}] has no labelled token to score")
            sums = losses.sum(dim=1)
            total += float(sums.sum())
            count += int(labelled.sum())
            per_sample += (sums / labelled).tolist()
    finally:
        model.train(was_training)
    return (total / count if count else 0.0), per_sample
