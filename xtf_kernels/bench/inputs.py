"""Deterministic inputs for one :class:`~xtf_kernels.bench.cases.Case`.

hidden ~ N(0, 1) (post-norm activations) and weight ~ N(0, 1 / H), so the logits have unit variance,
the regime of a trained head's early steps. A peer that skips tiles of near-zero gradient still skips
many here: at V 128256 most probabilities are far below CCE's default threshold (eps(bf16) / 32), which
is why CCE's exact mode is timed beside its default (:mod:`.providers.cce`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .cases import Case

IGNORE_INDEX = -100


class BenchInputs(NamedTuple):
    """hidden (N, H) and weight (V, H) in the case's dtype; targets (N,) int64 in [0, V).

    token_weights: (N,) fp32 of 1.0 / 0.0 keeping ``case.kept_tokens`` rows (None when all are kept).
    targets_ignored: targets with ``IGNORE_INDEX`` at the dropped rows (targets itself when all are kept),
        the way to drop tokens with a peer that has no per-token weights.
    requires_grad follows the mode: hidden and weight for fwd_bwd, hidden only for frozen, none for fwd.
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    targets: torch.Tensor
    token_weights: torch.Tensor | None
    targets_ignored: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Bytes held by the inputs (what a peak-memory figure's "extra" is measured over)."""
        tensors = {id(t): t for t in self if t is not None}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def clear_grads(self) -> None:
        self.hidden.grad = None
        self.weight.grad = None


def make_inputs(case: Case, device: torch.device | str, seed: int = 0) -> BenchInputs:
    """Inputs for ``case`` on ``device``, the same for a given seed and device whatever the provider.

    Drawn on the device's own generator: a Llama-3 head is 0.5 G values, seconds to draw on a CPU and
    milliseconds on a GPU, and a GPU run makes them once per (case, provider).
    """
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    n, h, v = case.tokens, case.hidden, case.vocab
    dtype = case.torch_dtype
    draw = dict(generator=generator, device=device)
    hidden = torch.randn(n, h, **draw).to(dtype)
    weight = torch.randn(v, h, **draw).mul_(h**-0.5).to(dtype)
    targets = torch.randint(0, v, (n,), **draw)
    token_weights = None
    targets_ignored = targets
    if case.kept_tokens < n:
        kept = torch.randperm(n, **draw)[: case.kept_tokens]
        mask = torch.zeros(n, dtype=torch.bool, device=device).index_fill_(0, kept, True)
        token_weights = mask.to(torch.float32)
        targets_ignored = targets.masked_fill(~mask, IGNORE_INDEX)
    hidden.requires_grad_(case.mode in ("fwd_bwd", "frozen"))
    weight.requires_grad_(case.mode == "fwd_bwd")
    return BenchInputs(hidden, weight, targets, token_weights, targets_ignored)
