"""A smoke run of the noisy-SFT benchmark at toy sizes: every method runs and the metrics are consistent."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from benchmarks.methods import noisy_sft  # noqa: E402  (after the skip: the module imports transformers models)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matmuls gain nothing from a second thread and lose a lot when the cores are shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_smoke_run_writes_consistent_results(tmp_path):
    config = noisy_sft.BenchConfig(pool_samples=40, pretrain_samples=32, pretrain_steps=1, warmup_samples=16,
                                   warmup_steps=1, heldout_problems=4, finetune_epochs=1, batch_size=16,
                                   hidden_size=32, n_parts=2)
    runs = [noisy_sft.run_seed(config, seed, lambda message: None) for seed in (0, 1)]
    summary = noisy_sft.summarise(runs)
    noisy_sft.write_results(str(tmp_path), config, runs, summary, {"machine": "test", "threads": 1,
                                                                    "torch": "-", "date": "-"})
    oracle = summary["selection"]["oracle"]
    assert oracle["precision"] == (1.0, 0.0) and oracle["recall"] == (1.0, 0.0)
    for name, metrics in summary["selection"].items():
        assert 0.0 <= metrics["precision"][0] <= 1.0 and 0.0 <= metrics["recall"][0] <= 1.0, name
    tc = [r["selection"]["Token Cleaning (fixed)"]["dropped_fraction"] for r in runs]
    assert all(0.38 <= fraction <= 0.42 for fraction in tc)  # k = 0.6 keeps floor(0.6 N)
    assert set(summary["accuracy"]) == set(noisy_sft.ACCURACY_ORDER)
    saved = json.loads((tmp_path / "noisy_sft.json").read_text())
    assert saved["summary"]["accuracy"]["oracle"] == list(summary["accuracy"]["oracle"])
    assert "| oracle |" in (tmp_path / "noisy_sft.md").read_text()
    assert len((tmp_path / "noisy_sft.csv").read_text().splitlines()) > 1 + 2 * 9
