"""Cut Cross-Entropy's ``linear_cross_entropy`` (Triton; logits never stored), in two modes.

cce        called as a user would, with its defaults: ``impl="cce"``, ``filter_eps="auto"`` (named "high" in
           cut-cross-entropy 25.1; the same value, ``torch.finfo(dtype).eps / 32``: 2.44e-4 in bf16). Its
           backward skips every logit tile whose softmax gradient stays below that threshold, so it does
           less than the exact work, and how much less depends on the logits: with unit-variance logits at
           V 128256 a typical probability is 1 / (V * e^0.5) = 4.7e-6 and a tile's largest (z near 4) about
           2.5e-4, the threshold itself, so a large share of the tiles is skipped (about half, by a review
           on paper; not measured).
cce-exact  ``impl="cce_exact"``: no gradient filter, d_hidden and d_weight accumulated in fp32: the exact
           loss and gradients, the like-for-like peer of xtf's exact paths. That impl exists from
           cut-cross-entropy 25.6 (the source of apple/ml-cross-entropy; PyPI's newest is 25.1.1):
           with an older version the case is reported "unsupported", never silently run with other options.

Dropped tokens are ``ignore_index`` targets, which CCE removes before any work.
"""

from __future__ import annotations

import importlib

import torch

from ..cases import Case
from ..environment import package_version
from ..inputs import IGNORE_INDEX
from ..inputs import BenchInputs
from .base import Provider
from .base import Step
from .base import Unavailable
from .base import needs_cuda
from .base import needs_module
from .base import training_step

EXACT_IMPL = "cce_exact"


def has_exact_impl() -> bool:
    """Whether the installed cut_cross_entropy offers ``impl="cce_exact"``."""
    module = importlib.import_module("cut_cross_entropy.linear_cross_entropy")
    impls = getattr(module, "LinearCrossEntropyImpl", None)
    return impls is not None and EXACT_IMPL.upper() in impls.__members__


def _check(device: torch.device, case: Case) -> Unavailable | None:
    return needs_cuda(device, "CCE's Triton kernels") or needs_module(
        "cut_cross_entropy", "pip install cut-cross-entropy"
    )


def _check_exact(device: torch.device, case: Case) -> Unavailable | None:
    unavailable = _check(device, case)
    if unavailable is None and not has_exact_impl():
        version = package_version("cut-cross-entropy") or "?"
        return Unavailable(
            "unsupported", f"cut-cross-entropy {version} has no impl='{EXACT_IMPL}' (added in 25.6): install a "
            "wheel built from apple/ml-cross-entropy (benchmarks/peer_wheels.sh)",
        )
    return unavailable


def _builder(**options):
    def build(inputs: BenchInputs, case: Case) -> Step:
        from cut_cross_entropy import linear_cross_entropy

        return training_step(
            inputs, case,
            lambda: linear_cross_entropy(
                inputs.hidden, inputs.weight, inputs.targets_ignored, ignore_index=IGNORE_INDEX,
                softcap=case.softcap, **options,
            ),
        )

    return build


PROVIDER = Provider("cce", "peer", "cut_cross_entropy.linear_cross_entropy, defaults (gradient filter eps/32)",
                    "cut-cross-entropy", _check, _builder())
EXACT_PROVIDER = Provider("cce-exact", "peer", "cut_cross_entropy.linear_cross_entropy, impl='cce_exact'",
                          "cut-cross-entropy", _check_exact, _builder(impl=EXACT_IMPL))
