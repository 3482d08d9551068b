"""Step-counted training with the fused loss, with held-out loss along the way.

Every optimizer step goes through :func:`xtf_kernels.methods.finetune`, whose loss is
:func:`xtf_kernels.linear_cross_entropy` on the final hidden states and the lm_head weight (mean over the
batch's labelled tokens; tokens a method dropped have label -100 and cost no lm_head compute). This module
only decides which samples go into which step (whole shuffled passes over the data, cut to exactly
``steps`` full batches) and evaluates the held-out loss every ``eval_every`` steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field

import torch

from ..datasets import IGNORE_INDEX
from ..datasets import TokenizedSample
from ..datasets import collate
from ..methods import causal_lm_loss
from ..methods import finetune


@dataclass
class TrainingRun:
    """What one training run did.

    losses: the loss of every step (mean over that batch's labelled tokens, so a filtered run's loss is over
        the tokens it kept); eval_steps / heldout_losses: the held-out loss (mean over every held-out response
        token) after that many steps, step 0 included; seconds: wall time of the optimizer steps (evaluation
        excluded); input_tokens: tokens fed through the model (padding excluded); loss_tokens: tokens that
        carried a loss.
    """

    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    heldout_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    input_tokens: int = 0
    loss_tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.input_tokens / self.seconds if self.seconds > 0 else 0.0


def step_plan(num_samples: int, steps: int, batch_size: int, seed: int) -> list[int]:
    """``steps * batch_size`` sample indices: shuffled passes over the data (a new permutation per pass)."""
    generator = torch.Generator().manual_seed(seed)
    needed = steps * batch_size
    order: list[int] = []
    while len(order) < needed:
        order.extend(torch.randperm(num_samples, generator=generator).tolist())
    return order[:needed]


def _loss_tokens(sample: TokenizedSample) -> int:
    return int((sample.labels[1:] != IGNORE_INDEX).sum())


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


def train_steps(
    model,
    samples: list[TokenizedSample],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    eval_samples: list[TokenizedSample] | None = None,
    eval_every: int | None = None,
    desc: str = "training",
    progress: bool = False,
) -> TrainingRun:
    """Train ``model`` in place for exactly ``steps`` AdamW steps of ``batch_size`` samples at rate ``lr``.

    The sample order depends only on (len(samples), steps, batch_size, seed), so runs over differently
    filtered copies of the same samples see the same samples in the same steps.
    """
    if not samples:
        raise ValueError(f"{desc}: no samples to train on")
    if eval_every is None:
        eval_every = steps
    order = step_plan(len(samples), steps, batch_size, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    run = TrainingRun()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, unit="step", leave=False)

    def on_step(_step: int, loss: float) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def evaluate(done: int) -> None:
        if eval_samples:
            run.eval_steps.append(done)
            run.heldout_losses.append(heldout_loss(model, eval_samples))

    evaluate(0)
    done = 0
    try:
        while done < steps:
            segment_steps = min(eval_every, steps - done)
            segment = [samples[i] for i in order[done * batch_size : (done + segment_steps) * batch_size]]
            start = time.perf_counter()
            # finetune shuffles within the segment with its seed; the segment itself is already a fixed draw.
            run.losses.extend(finetune(model, segment, epochs=1, lr=lr, batch_size=batch_size,
                                       seed=seed + done, optimizer=optimizer, on_step=on_step))
            run.seconds += time.perf_counter() - start
            run.input_tokens += sum(len(s) for s in segment)
            run.loss_tokens += sum(_loss_tokens(s) for s in segment)
            done += segment_steps
            evaluate(done)
    finally:
        if bar is not None:
            bar.close()
    return run
