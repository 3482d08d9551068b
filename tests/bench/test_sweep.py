"""The chunk sweep and the crossover on the CPU: measured points for the torch backend, reasons for the rest."""

from __future__ import annotations

import os

import torch

from xtf_kernels.bench import sweep
from xtf_kernels.bench.cases import Case

CPU = torch.device("cpu")
HEAD = Case(tokens=96, hidden=16, vocab=500, dtype="float32")


def test_chunk_sweep_measures_each_chunk_and_names_missing_paths(monkeypatch):
    monkeypatch.setenv("XTF_TRITON_PATH", "auto")
    points = sweep.chunk_sweep(HEAD, [sweep.TORCH, sweep.TRITON_CHUNKED], [32, 64], CPU, warmup=0, repeats=1)
    assert [(p.path, p.chunk) for p in points] == [("torch", None), ("torch", 32), ("torch", 64),
                                                   ("triton-chunked", None), ("triton-chunked", 32),
                                                   ("triton-chunked", 64)]
    for p in points[:3]:
        assert p.ms > 0 and p.tflops == HEAD.flops / (p.ms * 1e-3) / 1e12 and not p.note
    assert all(p.ms is None and p.note.startswith("missing:") and "CUDA" in p.note for p in points[3:])
    assert os.environ["XTF_TRITON_PATH"] == "auto"  # restored
    assert "triton-chunked" in sweep.format_points(points)


def test_crossover_runs_each_size_on_each_path():
    points = sweep.crossover(HEAD, [sweep.TORCH], [8, 40], CPU, warmup=0, repeats=1)
    assert [(p.sweep, p.tokens) for p in points] == [("crossover", 8), ("crossover", 40)]
    assert all(p.ms > 0 for p in points)
