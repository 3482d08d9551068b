"""A transformers ``TrainerCallback`` that reports, during training, the NLL of the tokens a filter dropped.

Why: a filter removes tokens from the loss, not from what the model must still produce. XTF's KN rule drops
what the base already predicts (``<eos>``, the answer template), and fine-tuning without them can make the
model forget them: on the toy benchmark, held-out loss on clean responses climbed from 0.66 to 2.82 during
XTF's fine-tuning and exact match fell to 0. Watching the NLL of the dropped tokens of a fixed probe set makes
that drift visible while it happens, next to the NLL of the kept tokens.

Usage::

    from xtf_kernels.integrations.dropped_token_monitor import DroppedTokenMonitor

    results = score_samples(XTFScorer(base, XTFConfig()), samples)        # what the filter drops
    monitor = DroppedTokenMonitor(samples[:64], results[:64], every_steps=50)
    Trainer(model=model, args=args, train_dataset=filtered, callbacks=[monitor]).train()
    monitor.history            # [{"step": 0, "dropped_nll": ..., "kept_nll": ..., ...}, ...]

Each measurement is also appended to ``trainer.state.log_history`` (saved with checkpoints), and a
``UserWarning`` is raised once when the dropped tokens' NLL has grown by more than ``warn_increase`` nats
over its value before training. The NLL goes through the fused loss (no logits tensor); the probe samples
must carry their ORIGINAL labels (the dropped tokens labelled). Custom loops call :meth:`measure`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from ..datasets.samples import TokenizedSample
from ..methods.base import SampleScores
from ..methods.nll import mean_nll

try:
    from transformers import TrainerCallback
except ImportError as exc:  # the only optional dependency of this module
    raise ImportError("DroppedTokenMonitor needs transformers: pip install 'xtf_kernels[hf]'") from exc


class DroppedTokenMonitor(TrainerCallback):
    """Mean NLL of a probe set's dropped and kept response tokens, every ``every_steps`` optimizer steps.

    Args:
        samples: probe samples with their original labels (every response token labelled).
        dropped: per sample, what the filter dropped: :class:`~xtf_kernels.methods.SampleScores` or an (L,) bool
            tensor.
        every_steps: measure at the start of training and every this many optimizer steps (and at the end).
        warn_increase: warn once when the dropped tokens' NLL exceeds its first measurement by more than this
            many nats (None = never).
        batch_size: samples per forward pass of a measurement.
    """

    def __init__(self, samples: Sequence[TokenizedSample], dropped: Sequence[SampleScores | torch.Tensor], *,
                 every_steps: int = 50, warn_increase: float | None = 0.5, batch_size: int = 16):
        samples, dropped = list(samples), list(dropped)
        if len(samples) != len(dropped):
            raise ValueError(f"{len(samples)} samples but {len(dropped)} dropped masks")
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1:
            raise ValueError(f"every_steps must be a positive int, got {every_steps!r}")
        if warn_increase is not None and (isinstance(warn_increase, bool) or not isinstance(warn_increase, (int, float))
                                          or not warn_increase >= 0):
            raise ValueError(f"warn_increase must be a number >= 0 or None, got {warn_increase!r}")
        masks = []
        for index, (sample, entry) in enumerate(zip(samples, dropped)):
            mask = entry.dropped if isinstance(entry, SampleScores) else entry
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != sample.input_ids.shape:
                raise ValueError(f"dropped[{index}] must be SampleScores or an (L,) bool tensor shaped like the sample")
            masks.append(mask & sample.response_mask)
        if not any(bool(m.any()) for m in masks):
            raise ValueError("the probe set has no dropped token to monitor")
        self.samples = samples
        self.dropped = masks
        self.kept = [s.response_mask & ~m for s, m in zip(samples, masks)]
        self.every_steps = every_steps
        self.warn_increase = warn_increase
        self.batch_size = batch_size
        self.history: list[dict] = []
        self._warned = False

    def measure(self, model, step: int) -> dict:
        """One measurement with ``model`` at ``step``: appended to :attr:`history` and returned."""
        dropped_nll, dropped_tokens = mean_nll(model, self.samples, masks=self.dropped, batch_size=self.batch_size)
        kept_nll, kept_tokens = mean_nll(model, self.samples, masks=self.kept, batch_size=self.batch_size)
        record = {"step": int(step), "dropped_nll": dropped_nll, "kept_nll": kept_nll,
                  "dropped_tokens": dropped_tokens, "kept_tokens": kept_tokens}
        self.history.append(record)
        first = self.history[0]["dropped_nll"]
        if (self.warn_increase is not None and not self._warned and math.isfinite(first)
                and dropped_nll - first > self.warn_increase):
            self._warned = True
            warnings.warn(f"step {step}: the NLL of the tokens the filter dropped rose from {first:.3f} to "
                          f"{dropped_nll:.3f} nats (kept tokens: {kept_nll:.3f}); the model is forgetting what the "
                          "filter removed (protect those tokens, cap the drops or keep KN anchors)", UserWarning,
                          stacklevel=2)
        return record

    def _log(self, state, model) -> None:
        if self.history and self.history[-1]["step"] == state.global_step:
            return  # already measured at this step
        record = self.measure(model, state.global_step)
        state.log_history.append({f"monitor/{k}": v for k, v in record.items() if k != "step"} |
                                 {"step": record["step"]})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._log(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_steps == 0:
            self._log(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._log(state, model)
