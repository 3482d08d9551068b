"""Materialised PyTorch: the full (N, V) logits, upcast to fp32, then ``F.cross_entropy``.

This is what a training loop does without a fused loss (transformers' default ``logits.float()``).
fwd computes ``log_softmax(logits).gather(targets)`` under no_grad. Dropped tokens are ``ignore_index``
targets; their logits are still formed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cases import Case
from ..inputs import IGNORE_INDEX
from ..inputs import BenchInputs
from .base import Provider
from .base import Step
from .base import Unavailable
from .base import training_step


def _logits(inputs: BenchInputs, case: Case) -> torch.Tensor:
    logits = (inputs.hidden @ inputs.weight.t()).float()
    if case.softcap:
        logits = case.softcap * torch.tanh(logits / case.softcap)
    return logits


def _check(device: torch.device, case: Case) -> Unavailable | None:
    return None


def _build(inputs: BenchInputs, case: Case) -> Step:
    targets = inputs.targets_ignored
    if case.mode == "fwd":

        def forward() -> torch.Tensor:
            keep = targets != IGNORE_INDEX
            logprobs = torch.log_softmax(_logits(inputs, case), dim=-1)
            picked = logprobs.gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1)
            return torch.where(keep, picked, torch.zeros_like(picked))
    else:

        def forward() -> torch.Tensor:
            return F.cross_entropy(_logits(inputs, case), targets, ignore_index=IGNORE_INDEX)

    return training_step(inputs, case, forward)


PROVIDER = Provider("torch-materialised", "peer", "logits.float() + F.cross_entropy", "torch", _check, _build)
