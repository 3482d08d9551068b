"""Cut Cross-Entropy's ``linear_cross_entropy`` (Triton; logits never stored; default gradient filter).

Called as a user would, with its defaults (``impl="cce"``, ``filter_eps="high"``: backward skips logit
tiles whose gradient is below the filter). Dropped tokens are ``ignore_index`` targets, which it removes
before any work.
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
    return needs_cuda(device, "CCE's Triton kernels") or needs_module(
        "cut_cross_entropy", "pip install cut-cross-entropy"
    )


def _build(inputs: BenchInputs, case: Case) -> Step:
    from cut_cross_entropy import linear_cross_entropy

    return training_step(
        inputs, case,
        lambda: linear_cross_entropy(
            inputs.hidden, inputs.weight, inputs.targets_ignored, ignore_index=IGNORE_INDEX, softcap=case.softcap
        ),
    )


PROVIDER = Provider("cce", "peer", "cut_cross_entropy.linear_cross_entropy (defaults)", "cut-cross-entropy",
                    _check, _build)
