"""A plain supervised fine-tuning loop on tokenised samples with the fused loss.

The loss is :func:`xtf_kernels.linear_cross_entropy` on the final hidden states and the lm_head weight
(mean over the labelled tokens of the batch, -100 dropped), so a filtered dataset's dropped tokens cost no
lm_head compute. It is the default training step of the self-evolving Token Cleaning loop and what the
demo and the benchmark fine-tune with; any other loop (a transformers ``Trainer``) can be used instead.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence

import torch

from ..datasets.samples import TokenizedSample
from ..datasets.samples import collate
from ..functional import linear_cross_entropy
from ._causal_lm import check_causal_lm
from ._causal_lm import final_hidden_states
from ._causal_lm import lm_head_of
from ._causal_lm import model_device
from ._causal_lm import unwrap


def causal_lm_loss(model, batch, *, backend: str = "auto", reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of a padded :class:`~xtf_kernels.datasets.Batch`, through the fused loss.

    Returns () fp32 for "mean" / "sum" (0.0 when no token is labelled), or (B, L - 1) fp32 for "none"
    (position t holds the loss of token t + 1).
    """
    head = lm_head_of(model)
    hidden = final_hidden_states(model, batch.input_ids, batch.attention_mask)[:, :-1]
    bias = head.bias
    if head.temperature != 1.0:
        if head.softcap is not None:
            raise ValueError("a model with both a logit softcap and a logit scale is not supported")
        # softcap-free logits / T == (hidden / T) @ W.T + bias / T
        hidden = hidden / head.temperature
        bias = None if bias is None else bias / head.temperature
    return linear_cross_entropy(hidden, head.weight, batch.labels[:, 1:], bias=bias, softcap=head.softcap,
                                reduction=reduction, backend=backend)


def finetune(
    model,
    samples: Sequence[TokenizedSample],
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 16,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    seed: int = 0,
    backend: str = "auto",
    optimizer: torch.optim.Optimizer | None = None,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = False,
) -> list[float]:
    """Train ``model`` in place on ``samples`` (shuffled each epoch with ``seed``) with AdamW.

    Args:
        model: a transformers causal LM; left in eval mode afterwards.
        samples: tokenised samples; their labels decide which tokens are trained on.
        epochs / lr / batch_size / weight_decay / max_grad_norm: the usual (None = no clipping).
        optimizer: continue with this optimizer instead of a fresh AdamW (e.g. across self-evolving parts).
        on_step: called with (step, loss) after every optimizer step.

    Returns:
        the loss of every step (mean over the batch's labelled tokens).
    """
    check_causal_lm(model)
    samples = list(samples)
    if not samples:
        raise ValueError("samples must not be empty")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    device = model_device(model)
    pad = int(getattr(unwrap(model).config, "pad_token_id", None) or 0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer or torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    steps = [(epoch, torch.randperm(len(samples), generator=generator)) for epoch in range(epochs)]
    plan = [order[i : i + batch_size].tolist() for _, order in steps for i in range(0, len(samples), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        plan = tqdm(plan, desc="fine-tuning", unit="step")
    losses: list[float] = []
    model.train()
    try:
        for step, indices in enumerate(plan):
            batch = collate([samples[i] for i in indices], pad).to(device)
            loss = causal_lm_loss(model, batch, backend=backend)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step, losses[-1])
    finally:
        model.eval()
    return losses
