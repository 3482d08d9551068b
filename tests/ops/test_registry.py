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
