"""float64 references and a scale-aware closeness check for the pytest-benchmark cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xtf_kernels.bench.cases import Case
from xtf_kernels.bench.inputs import IGNORE_INDEX
from xtf_kernels.bench.inputs import BenchInputs


def reference_logits(inputs: BenchInputs, case: Case, *, grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden, weight, softcapped logits) in float64 on the CPU, hidden / weight leaves with grad if asked."""
    hidden = inputs.hidden.detach().double().cpu().requires_grad_(grad)
    weight = inputs.weight.detach().double().cpu().requires_grad_(grad)
    logits = hidden @ weight.t()
    if case.softcap:
        logits = case.softcap * torch.tanh(logits / case.softcap)
    return hidden, weight, logits


def reference_loss(inputs: BenchInputs, case: Case):
    """float64 (mean CE over kept tokens, d_hidden, d_weight) from materialised logits."""
    hidden, weight, logits = reference_logits(inputs, case, grad=True)
    loss = F.cross_entropy(logits, inputs.targets_ignored.cpu(), ignore_index=IGNORE_INDEX)
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


def reference_logprobs(inputs: BenchInputs, case: Case) -> torch.Tensor:
    """float64 log p(target) per token, 0 at dropped tokens."""
    _h, _w, logits = reference_logits(inputs, case, grad=False)
    targets = inputs.targets_ignored.cpu()
    keep = targets != IGNORE_INDEX
    picked = torch.log_softmax(logits, -1).gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1)
    return torch.where(keep, picked, torch.zeros_like(picked))


def assert_near(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str) -> None:
    """max |actual - expected| <= rel * max |expected| (+1e-12): a scale-aware check for gradients."""
    actual = actual.detach().double().cpu()
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rel * scale + 1e-12, f"{what}: max error {err:.3g} > {rel} * max |expected| {scale:.3g}"


def provider_params(cpu: tuple[str, ...], cuda: tuple[str, ...]) -> list:
    """(provider, device) parameters with their tier markers."""
    return [
        *(pytest.param((name, "cpu"), marks=pytest.mark.cpu, id=f"{name}-cpu") for name in cpu),
        *(pytest.param((name, "cuda"), marks=pytest.mark.cuda, id=f"{name}-cuda") for name in cuda),
    ]
