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
def heldout_loss(model, samples: list[TokenizedSample], *,
                 batch_size: int = 64) -> tuple[float, list[float], list[int]]:
    """The NLL of ``samples``' labelled tokens through the fused loss (reduction "none": (B, L - 1) fp32, 0 at
    unlabelled positions), accumulated in float64: (mean over every labelled token, per sample the summed NLL
    of its labelled tokens, per sample their number). Two models scored on the same samples pair problem by
    problem through the sums; divided by the mean count, their differences average to the difference of the
    means. ValueError for an empty list or a sample without a labelled token (naming it)."""
    if not samples:
        raise ValueError("samples must not be empty")
    device = next(model.parameters()).device
    pad = int(getattr(model.config, "pad_token_id", None) or 0)
    sums: list[float] = []
    counts: list[int] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(samples), batch_size):
            batch = collate(samples[start : start + batch_size], pad).to(device)
            labelled = (batch.labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
            if not bool(labelled.all()):
                index = start + int((labelled == 0).nonzero()[0])
                raise ValueError(f"samples[{index}] has no labelled token to score")
            sums += causal_lm_loss(model, batch, reduction="none").double().sum(dim=1).tolist()
            counts += labelled.tolist()
    finally:
        model.train(was_training)
    return sum(sums) / sum(counts), sums, counts
