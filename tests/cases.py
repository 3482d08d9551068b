"""Random problem instances shared by the op tests (deterministic per seed)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HeadCase:
    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    targets: torch.Tensor
    token_weights: torch.Tensor | None
    class_weights: torch.Tensor | None = None

    def leaves(self) -> list[torch.Tensor]:
        return [x for x in (self.hidden, self.weight, self.bias) if x is not None]

    def float64_leaves(self) -> list[torch.Tensor]:
        """Detached float64 copies of the differentiable inputs, for the reference."""
        return [x.detach().double().requires_grad_() for x in self.leaves()]


def make_case(
    lead: tuple[int, ...],
    hidden_size: int,
    vocab: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    bias: bool = False,
    token_weights: bool = False,
    class_weights: bool = False,
    ignore_index: int = -100,
    ignore_fraction: float = 0.2,
    logit_std: float = 2.0,
    seed: int = 0,
    requires_grad: bool = True,
) -> HeadCase:
    """hidden (*lead, H), weight (V, H) scaled so logits have std ~ logit_std, targets (*lead).

    class_weights: (V,) fp32 in [0, 2) with about 10% exact zeros (a class that counts for nothing); drawn
    after everything else, so the other tensors do not depend on it.
    """
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*lead, hidden_size, generator=gen)
    weight = torch.randn(vocab, hidden_size, generator=gen) * (logit_std / hidden_size**0.5)
    bias_t = torch.randn(vocab, generator=gen) * 0.5 if bias else None
    targets = torch.randint(0, vocab, lead, generator=gen)
    targets[torch.rand(lead, generator=gen) < ignore_fraction] = ignore_index
    weights_t = None
    if token_weights:
        weights_t = torch.rand(lead, generator=gen) * 2.0
        weights_t[torch.rand(lead, generator=gen) < 0.2] = 0.0

    class_t = None
    if class_weights:
        class_t = torch.rand(vocab, generator=gen) * 2.0
        class_t[torch.rand(vocab, generator=gen) < 0.1] = 0.0

    def prep(x):
        if x is None:
            return None
        return x.to(device=device, dtype=dtype).requires_grad_(requires_grad)

    return HeadCase(
        prep(hidden), prep(weight), prep(bias_t), targets.to(device),
        None if weights_t is None else weights_t.to(device), None if class_t is None else class_t.to(device),
    )
