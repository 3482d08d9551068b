"""Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` (Triton; chunks of N / ceil(V / H) rows).

It has no per-token weights: dropped tokens are passed as ``ignore_index`` targets, which it still
multiplies through (it does not compact them away).
"""

from __future__ import annotations

import torch

from ..cases import Case
from ..inputs import IGNORE_INDEX
from ..inputs import BenchInputs
from .base import Provider
from .base import Step
from .base import Unavailable
from .base import needs_cuda
from .base import needs_module
from .base import training_step


def _check(device: torch.device, case: Case) -> Unavailable | None:
    return needs_cuda(device, "Liger's Triton kernels") or needs_module(
        "liger_kernel", "pip install liger-kernel"
    )


def _build(inputs: BenchInputs, case: Case) -> Step:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss_fn = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, softcap=case.softcap)
    # Its forward signature is (lin_weight, _input, target).
    return training_step(inputs, case, lambda: loss_fn(inputs.weight, inputs.hidden, inputs.targets_ignored))


PROVIDER = Provider("liger", "peer", "LigerFusedLinearCrossEntropyLoss", "liger-kernel", _check, _build)
