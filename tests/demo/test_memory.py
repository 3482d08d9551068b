"""The loss-memory comparison: which providers run, what the numbers mean, a provider that cannot run."""

from __future__ import annotations

import pytest
import torch

from xtf_kernels.demo import memory
from xtf_kernels.demo.memory import compare_memory
from xtf_kernels.demo.memory import fused_provider

CPU = torch.device("cpu")


def test_the_fused_provider_on_cpu_is_the_torch_backend():
    assert fused_provider(CPU) == "xtf-torch"


def test_both_sides_measured_at_a_small_shape(monkeypatch):
    # 16-row chunks: the fused op holds a (16, 1024) fp32 logits chunk where materialised holds (96, 1024) twice
    monkeypatch.setenv("XTF_CHUNK_SIZE", "16")
    out = compare_memory(tokens=96, hidden=16, vocab=1024, device=CPU, seed=0, cpu_warmup=0, cpu_repeats=2)
    assert (out["tokens"], out["hidden"], out["vocab"], out["dtype"], out["mode"]) == (96, 16, 1024, "float32",
                                                                                     "fwd_bwd")
    assert out["method"] == "torch allocator trace (profiler)" and "cpu" in out["device"]
    fused, materialised = out["fused"], out["materialised"]
    assert (fused["provider"], materialised["provider"]) == ("xtf-torch", "torch-materialised")
    assert fused["status"] == materialised["status"] == "ok"
    logits_bytes = 96 * 1024 * 4
    assert materialised["extra_bytes"] >= logits_bytes
    assert fused["extra_bytes"] < logits_bytes
    assert out["extra_ratio"] == pytest.approx(materialised["extra_bytes"] / fused["extra_bytes"])
    for side in (fused, materialised):
        assert side["peak_bytes"] > side["extra_bytes"] > 0
        assert side["tokens_per_second"] == pytest.approx(96 / (side["ms"] * 1e-3))


def test_a_provider_that_cannot_run_is_reported_not_raised(monkeypatch):
    monkeypatch.setattr(memory, "fused_provider", lambda device: "xtf-cuda")
    out = compare_memory(tokens=8, hidden=4, vocab=32, device=CPU, seed=0, cpu_warmup=0, cpu_repeats=1)
    fused = out["fused"]
    assert fused["status"] == "missing" and "CUDA" in fused["reason"]
    assert fused["peak_bytes"] is fused["extra_bytes"] is fused["ms"] is fused["tokens_per_second"] is None
    assert out["materialised"]["status"] == "ok" and out["extra_ratio"] is None
