"""The two CCE providers pass the options they name: a stand-in cut_cross_entropy records every call."""

from __future__ import annotations

import enum
import sys
import types

import pytest
import torch

from xtf_kernels.bench.cases import Case
from xtf_kernels.bench.inputs import IGNORE_INDEX
from xtf_kernels.bench.inputs import make_inputs
from xtf_kernels.bench.providers import cce

CUDA = torch.device("cuda")
CASE = Case(tokens=6, hidden=4, vocab=11, dtype="float32", keep=0.5, softcap=30.0)


def _install_stand_in(monkeypatch, impls: tuple[str, ...]) -> list[dict]:
    """A cut_cross_entropy package whose linear_cross_entropy records its arguments and returns a loss."""
    calls: list[dict] = []

    def linear_cross_entropy(e, c, targets, **kwargs):
        calls.append(dict(kwargs, targets=targets))
        return (e @ c.T).float().logsumexp(-1).mean()

    package = types.ModuleType("cut_cross_entropy")
    package.linear_cross_entropy = linear_cross_entropy
    module = types.ModuleType("cut_cross_entropy.linear_cross_entropy")
    module.LinearCrossEntropyImpl = enum.IntEnum("LinearCrossEntropyImpl", [name.upper() for name in impls])
    monkeypatch.setitem(sys.modules, "cut_cross_entropy", package)
    monkeypatch.setitem(sys.modules, "cut_cross_entropy.linear_cross_entropy", module)
    return calls


def test_default_mode_passes_no_option_and_exact_mode_asks_for_cce_exact(monkeypatch):
    calls = _install_stand_in(monkeypatch, ("cce", "torch_compile", "cce_exact"))
    inputs = make_inputs(CASE, "cpu")
    cce.PROVIDER.build(inputs, CASE)()
    cce.EXACT_PROVIDER.build(inputs, CASE)()
    default, exact = calls
    assert "impl" not in default and "filter_eps" not in default
    assert exact["impl"] == "cce_exact" and "filter_eps" not in exact
    for call in calls:
        assert call["ignore_index"] == IGNORE_INDEX and call["softcap"] == 30.0
        assert torch.equal(call["targets"], inputs.targets_ignored)  # dropped tokens as ignore_index
    assert inputs.hidden.grad is not None


def test_exact_mode_is_unsupported_without_cce_exact(monkeypatch):
    _install_stand_in(monkeypatch, ("cce", "torch_compile"))  # cut-cross-entropy 25.1.1, PyPI's newest
    monkeypatch.setattr(cce, "needs_cuda", lambda device, what: None)
    monkeypatch.setattr(cce, "needs_module", lambda module, install: None)
    assert cce.PROVIDER.check(CUDA, CASE) is None
    unavailable = cce.EXACT_PROVIDER.check(CUDA, CASE)
    assert unavailable.status == "unsupported" and "cce_exact" in unavailable.reason
    _install_stand_in(monkeypatch, ("cce", "torch_compile", "cce_exact"))
    assert cce.EXACT_PROVIDER.check(CUDA, CASE) is None


@pytest.mark.parametrize("provider", [cce.PROVIDER, cce.EXACT_PROVIDER], ids=["cce", "cce-exact"])
def test_both_need_a_gpu(provider):
    unavailable = provider.check(torch.device("cpu"), CASE)
    assert unavailable.status == "missing" and "CUDA" in unavailable.reason
