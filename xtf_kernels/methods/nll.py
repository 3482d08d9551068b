"""Per-token negative log-likelihood of labelled tokens through the fused loss (no logits tensor), and its
mean over a sample set: what the self-evolving Token Cleaning round check, the threshold calibration and the
dropped-token monitor measure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..datasets.samples import IGNORE_INDEX
from ..datasets.samples import TokenizedSample
from ..datasets.samples import batches
from ..datasets.samples import collate
from ._causal_lm import model_device
from ._causal_lm import unwrap
from .finetune import causal_lm_loss


@torch.no_grad()
def token_nll(model, batch) -> torch.Tensor:
    """(B, L) fp32 -log p(token t | tokens < t) at every labelled position t >= 1, NaN elsewhere.

    Args:
        model: a transformers causal LM; batch: a :class:`~xtf_kernels.datasets.Batch` on its device.
    """
    losses = causal_lm_loss(model, batch, reduction="none")  # (B, L - 1): position t holds token t + 1
    out = torch.full(batch.input_ids.shape, math.nan, dtype=torch.float32, device=losses.device)
    labelled = batch.labels[:, 1:] != IGNORE_INDEX
    out[:, 1:] = torch.where(labelled, losses.float(), out[:, 1:])
    return out


@torch.no_grad()
def mean_nll(model, samples: Sequence[TokenizedSample], *, batch_size: int = 16,
             masks: Sequence[torch.Tensor] | None = None) -> tuple[float, int]:
    """(mean NLL, number of tokens) over the labelled tokens of ``samples`` (each sample's ``masks[i]`` (L,) bool
    further selects positions); NaN and 0 when no token is selected. The model is put in eval mode and back."""
    samples = list(samples)
    if masks is not None and len(masks) != len(samples):
        raise ValueError(f"masks has {len(masks)} entries for {len(samples)} samples")
    pad = int(getattr(unwrap(model).config, "pad_token_id", None) or 0)
    device = model_device(model)
    was_training = model.training
    model.eval()
    total, count, start = 0.0, 0, 0
    try:
        for group in batches(samples, batch_size):
            batch = collate(group, pad).to(device)
            nll = token_nll(model, batch).cpu()
            for row, sample in enumerate(group):
                values = nll[row, : len(sample)]
                keep = ~torch.isnan(values)
                if masks is not None:
                    keep &= masks[start + row].bool()
                total += float(values[keep].double().sum())
                count += int(keep.sum())
            start += len(group)
    finally:
        model.train(was_training)
    return (total / count if count else math.nan), count
