"""Scoring the pool through the pipeline: masks, per-rule counts and ground-truth splits agree with the data."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from xtf_kernels.datasets import IGNORE_INDEX
from xtf_kernels.datasets import make_arithmetic_sft
from xtf_kernels.datasets import tiny_causal_lm
from xtf_kernels.demo.scoring import score_pool


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    data = make_arithmetic_sft(12, noise_fraction=0.3, seed=2)
    base = tiny_causal_lm("llama", vocab_size=len(data.tokenizer), hidden_size=16, num_layers=2, num_heads=2,
                          num_kv_heads=1, seed=0)
    reference = copy.deepcopy(base)
    with torch.no_grad():
        reference.lm_head.weight.add_(0.05 * torch.randn_like(reference.lm_head.weight))
    out = tmp_path_factory.mktemp("demo-scores")
    return data, score_pool(base, reference, data.samples, data.tokenizer, str(out), token_cleaning_k=0.5,
                            batch_size=5, progress=False), out


def test_both_methods_write_results_and_their_reports(scored):
    _data, scores, out = scored
    assert set(scores) == {"xtf", "token_cleaning"}
    for key, method in scores.items():
        assert method.report_dir == os.path.join(str(out), "scores", key)
        for name in ("manifest.json", "report.html", "report.json"):
            assert os.path.isfile(os.path.join(method.report_dir, name)), name


@pytest.mark.parametrize("key", ["xtf", "token_cleaning"])
def test_masks_counts_and_ground_truth_agree(scored, key):
    data, scores, _out = scored
    method = scores[key]
    dropped = tp = noisy = response = 0
    for sample, filtered, result in zip(data.samples, method.filtered, method.result.iter_samples()):
        mask = sample.response_mask
        gone = (filtered.labels == IGNORE_INDEX) & (sample.labels != IGNORE_INDEX)
        assert torch.equal(gone, result.dropped & mask)  # exactly the dropped response tokens lost their label
        assert torch.equal(filtered.input_ids, sample.input_ids)
        dropped += int(gone.sum())
        tp += int((gone & sample.noise_mask).sum())
        noisy += int((mask & sample.noise_mask).sum())
        response += int(mask.sum())
    assert method.statistics["dropped_tokens"] == dropped and method.statistics["scored_tokens"] == response
    union = method.accuracy["union"]
    assert union["noisy"] == noisy and union["recall"] == pytest.approx(tp / noisy)
    assert union["precision"] == pytest.approx(tp / dropped)
    for name, (clean, corrupted) in method.score_values.items():
        assert corrupted.numel() == noisy and clean.numel() == response - noisy, name
        assert torch.isfinite(clean).all() and torch.isfinite(corrupted).all()


def test_token_cleaning_keeps_its_k(scored):
    data, scores, _out = scored
    response = sum(int(s.response_mask.sum()) for s in data.samples)
    assert scores["token_cleaning"].statistics["dropped_tokens"] == response - int(0.5 * response)
    assert set(scores["token_cleaning"].thresholds) == {"influence"}
    assert set(scores["xtf"].thresholds) == {"kn", "tr"} and scores["xtf"].thresholds["kn"] == [pytest.approx(0.05)]
