"""Backend resolution: auto picks something that runs; unavailable backends raise a typed error."""

from __future__ import annotations

import pytest
import torch

import xtf_kernels as xk
from xtf_kernels.errors import BackendUnavailableError
from xtf_kernels.ops import registry


def test_auto_on_cpu_is_torch():
    assert registry.resolve_backend("auto", torch.device("cpu")) == "torch"


def test_cuda_backend_on_cpu_tensors_raises_typed_error():
    hidden, weight = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(BackendUnavailableError) as info:
        xk.linear_cross_entropy(hidden, weight, torch.zeros(3, dtype=torch.long), backend="cuda")
    assert info.value.backend == "cuda" and "CUDA" in info.value.reason


def test_availability_report_names_every_backend():
    report = registry.availability_report(torch.device("cpu"))
    assert set(report) == {"torch", "triton", "cuda"}
    assert report["torch"] is None
    assert all(reason is None or isinstance(reason, str) and reason for reason in report.values())


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        registry.resolve_backend("jax", torch.device("cpu"))


class _FakeBackendModule:
    """A stand-in backend module: declares only some features (or none, like a backend written before them)."""

    def __init__(self, features=None):
        if features is not None:
            self.features = frozenset(features)


@pytest.fixture
def fake_backends(monkeypatch):
    """Make "triton" available on CPU with a module declaring ``features``; returns a setter."""

    def install(features):
        module = _FakeBackendModule(features)
        fake = registry.Backend("triton", "unused", lambda device: None)
        monkeypatch.setattr(fake.__class__, "load", lambda self: module if self.name == "triton" else
                            registry.importlib.import_module(self.module))
        monkeypatch.setitem(registry._BACKENDS, "triton", fake)
        monkeypatch.setitem(registry._AUTO_ORDER, "cpu", ("triton", "torch"))

    return install


def test_torch_backend_declares_every_feature():
    assert registry.backend_features("torch") == registry.FEATURES


@pytest.mark.parametrize("declared", [None, (), ("argmax",)])
def test_auto_skips_a_backend_lacking_a_needed_feature(fake_backends, declared):
    fake_backends(declared)
    cpu = torch.device("cpu")
    assert registry.resolve_backend("auto", cpu) == "triton"
    assert registry.resolve_backend("auto", cpu, frozenset({"class_weights"})) == "torch"
    expected = "triton" if declared and "argmax" in declared else "torch"
    assert registry.resolve_backend("auto", cpu, frozenset({"argmax"})) == expected


@pytest.mark.parametrize("feature", sorted(registry.FEATURES))
def test_explicit_backend_lacking_a_feature_raises_naming_it(fake_backends, feature):
    fake_backends(())
    with pytest.raises(BackendUnavailableError) as info:
        registry.resolve_backend("triton", torch.device("cpu"), frozenset({feature}))
    assert info.value.backend == "triton"
    assert feature in info.value.reason and "backend='torch' does" in info.value.reason


def test_public_ops_route_features(fake_backends):
    """The functional API asks for exactly the features its options use."""
    fake_backends(("argmax",))
    hidden, weight, targets = torch.randn(6, 4), torch.randn(9, 4), torch.randint(0, 9, (6,))
    with pytest.raises(BackendUnavailableError, match="logit_scale"):
        xk.linear_cross_entropy(hidden, weight, targets, logit_scale=2.0, backend="triton")
    with pytest.raises(BackendUnavailableError, match="class_weights"):
        xk.linear_cross_entropy(hidden, weight, targets, class_weights=torch.ones(9), backend="triton")
    with pytest.raises(BackendUnavailableError, match="float64"):
        xk.token_logprobs(hidden.double(), weight.double(), targets, backend="triton")
    with pytest.raises(BackendUnavailableError, match="float64"):
        xk.influence_delta((hidden.double(), weight.double()), (hidden.double(), weight.double()), targets,
                           backend="triton")


def test_unknown_feature_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown backend feature"):
        registry.resolve_backend("torch", torch.device("cpu"), frozenset({"teleport"}))
