"""PyTorch's own chunked ``F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())`` (torch >= 2.13).

Run with the options' defaults (``chunking_method`` and ``acc_policy`` "auto"), as the torch docs
suggest. It has no softcap option (the case is reported unsupported) and no per-token weights: dropped
tokens are ``ignore_index`` targets.
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


def _check(device: torch.device, case: Case) -> Unavailable | None:
    if not hasattr(F, "linear_cross_entropy") or not hasattr(torch.nn, "LinearCrossEntropyOptions"):
        return Unavailable(
            "missing", f"torch {torch.__version__} has no F.linear_cross_entropy / LinearCrossEntropyOptions "
            "(added in torch 2.13)",
        )
    if case.softcap:
        return Unavailable("unsupported", "F.linear_cross_entropy has no logit softcap option")
    return None


def _build(inputs: BenchInputs, case: Case) -> Step:
    options = torch.nn.LinearCrossEntropyOptions()
    return training_step(
        inputs, case,
        lambda: F.linear_cross_entropy(
            inputs.hidden, inputs.weight, inputs.targets_ignored, ignore_index=IGNORE_INDEX, options=options
        ),
    )


PROVIDER = Provider("torch-chunked", "peer", "F.linear_cross_entropy(options=LinearCrossEntropyOptions())",
                    "torch", _check, _build)
