"""score_dataset: same results as in-memory scoring, resumption after an interruption, refusal of other data
or config, streaming global top k, input forms."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.methods import tiny
from xtf_kernels.errors import FingerprintMismatchError
from xtf_kernels.methods import TokenCleaningConfig
from xtf_kernels.methods import TokenCleaningScorer
from xtf_kernels.methods import XTFConfig
from xtf_kernels.methods import XTFScorer
from xtf_kernels.methods import score_samples
from xtf_kernels.pipeline import ScoreResult
from xtf_kernels.pipeline import score_dataset

pytest.importorskip("transformers")
pytest.importorskip("safetensors")
ABSOLUTE_KN = XTFConfig(kn_threshold="absolute", kn_pcp_max=0.9)


def assert_same(results_a, results_b):
    results_a, results_b = list(results_a), list(results_b)
    assert len(results_a) == len(results_b)
    for a, b in zip(results_a, results_b):
        assert torch.equal(a.dropped_by, b.dropped_by)
        assert a.scores.keys() == b.scores.keys()
        for name in a.scores:
            torch.testing.assert_close(a.scores[name], b.scores[name], atol=1e-6, rtol=1e-5, equal_nan=True)


def test_pipeline_matches_in_memory_scoring(tmp_path):
    model = tiny.model("llama")
    samples = tiny.data(20).samples
    result = score_dataset(XTFScorer(model), samples, tmp_path, batch_size=3, shard_size=7, progress=False)
    assert result.complete and result.num_samples == 20
    assert [s["num_samples"] for s in result.manifest["shards"]] == [7, 7, 6]
    assert_same(result.iter_samples(), score_samples(XTFScorer(model), samples))
    assert result.state()["s_tr"].shape == (len(tiny.data().tokenizer),)


def test_streaming_global_topk_matches_in_memory_topk(tmp_path):
    base = tiny.model("qwen2")
    ref = tiny.perturbed(base, seed=1)
    samples = tiny.data(20).samples
    config = TokenCleaningConfig(k=0.37)
    result = score_dataset(TokenCleaningScorer(base, ref, config), samples, tmp_path, shard_size=6, progress=False)
    assert_same(result.iter_samples(), score_samples(TokenCleaningScorer(base, ref, config), samples))
    topk = result.manifest["global_topk"]
    assert topk["keep"] == 37 * topk["total"] // 100


def test_ties_across_shards_are_kept_in_order(tmp_path):
    base = tiny.model("llama")
    samples = tiny.data(10).samples
    # ref == base: all scores tie at 0, so the kept tokens are the first floor(k N) in dataset order.
    result = score_dataset(TokenCleaningScorer(base, base, TokenCleaningConfig(k=0.5)), samples, tmp_path,
                           shard_size=3, progress=False)
    valid = torch.cat([~torch.isnan(r.scores["influence"]) for r in result.iter_samples()])
    kept = torch.cat([~r.dropped for r in result.iter_samples()]) & valid
    positions = valid.nonzero().squeeze(1)
    assert torch.equal(kept.nonzero().squeeze(1), positions[: positions.numel() // 2])


class Interrupt(Exception):
    pass


def test_resume_after_an_interruption(tmp_path, monkeypatch):
    model = tiny.model("llama")
    samples = tiny.data(20).samples
    reference = score_dataset(XTFScorer(model), samples, tmp_path / "whole", shard_size=4, batch_size=4,
                              progress=False)

    scorer = XTFScorer(model)
    calls = []
    original = scorer.score_batch

    def failing(batch):
        calls.append(batch.input_ids.shape[0])
        if len(calls) == 3:  # during the third shard
            raise Interrupt
        return original(batch)

    monkeypatch.setattr(scorer, "score_batch", failing)
    with pytest.raises(Interrupt):
        score_dataset(scorer, samples, tmp_path / "run", shard_size=4, batch_size=4, progress=False)
    partial = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert not partial["complete"] and len(partial["shards"]) == 2
    with pytest.raises(Exception, match="unfinished run"):
        list(ScoreResult(tmp_path / "run").iter_samples())

    calls.clear()
    monkeypatch.setattr(scorer, "score_batch", lambda batch: calls.append(batch.input_ids.shape[0]) or original(batch))
    resumed = score_dataset(scorer, samples, tmp_path / "run", shard_size=4, batch_size=4, progress=False)
    assert sum(calls) == 12  # only the 3 shards that were not complete
    assert_same(resumed.iter_samples(), reference.iter_samples())

    calls.clear()
    again = score_dataset(scorer, samples, tmp_path / "run", shard_size=4, batch_size=4, progress=False)
    assert calls == [] and again.complete  # a complete run is returned as is


def test_other_data_or_config_is_refused_unless_overwritten(tmp_path):
    model = tiny.model("llama")
    samples = tiny.data(8).samples
    score_dataset(XTFScorer(model), samples, tmp_path, progress=False)
    with pytest.raises(FingerprintMismatchError, match="different data"):
        score_dataset(XTFScorer(model), samples[:-1], tmp_path, progress=False)
    with pytest.raises(FingerprintMismatchError, match="different config"):
        score_dataset(XTFScorer(model, ABSOLUTE_KN), samples, tmp_path, progress=False)
    with pytest.raises(FingerprintMismatchError, match="different config"):
        score_dataset(XTFScorer(tiny.perturbed(model, seed=1)), samples, tmp_path, progress=False)
    result = score_dataset(XTFScorer(model, ABSOLUTE_KN), samples, tmp_path, overwrite=True,
                           progress=False)
    assert result.config["kn_pcp_max"] == 0.9


def test_jsonl_text_with_a_tokenizer(tmp_path):
    model = tiny.model("qwen2")
    dataset = tiny.data(9)
    path = tmp_path / "data.jsonl"
    dataset.to_jsonl(path, tokenised=False)
    result = score_dataset(XTFScorer(model), str(path), tmp_path / "out", tokenizer=dataset.tokenizer,
                           progress=False)
    from_list = score_dataset(XTFScorer(model), dataset.samples, tmp_path / "out2", progress=False)
    assert result.data_fingerprint == from_list.data_fingerprint
    assert_same(result.iter_samples(), from_list.iter_samples())


def test_max_batch_tokens_and_progress_bars(tmp_path, capsys):
    model = tiny.model("llama")
    samples = tiny.data(10).samples
    result = score_dataset(XTFScorer(model), samples, tmp_path, batch_size=8, max_batch_tokens=90, progress=True)
    err = capsys.readouterr().err
    assert "scoring" in err and "tok/s" in err
    assert_same(result.iter_samples(), score_samples(XTFScorer(model), samples))


def test_bad_arguments(tmp_path):
    model = tiny.model("llama")
    samples = tiny.data(4).samples
    with pytest.raises(TypeError, match="TokenScorer"):
        score_dataset(model, samples, tmp_path)
    with pytest.raises(ValueError, match="shard_size"):
        score_dataset(XTFScorer(model), samples, tmp_path, shard_size=0)
    with pytest.raises(ValueError, match="empty"):
        score_dataset(XTFScorer(model), [], tmp_path, progress=False)
    with pytest.raises(FileNotFoundError):
        score_dataset(XTFScorer(model), str(tmp_path / "missing.jsonl"), tmp_path, progress=False)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_per_sample_safeguards_after_the_global_top_k_match_in_memory_cleaning(tmp_path):
    from xtf_kernels.methods import token_cleaning
    from xtf_kernels.methods.safeguards import Safeguards

    base = tiny.model("qwen2")
    ref = tiny.perturbed(base, seed=1)
    samples = tiny.data(12).samples
    keep_whole = Safeguards(protect_special_tokens=False, max_sample_drop=None, max_total_drop=None,
                            all_dropped="keep")  # a protected eos would keep every response partly
    for safeguards, k, code in ((Safeguards(max_sample_drop=0.3, max_total_drop=None), 0.1, 2),  # capped
                                (keep_whole, 0.0, 4)):  # k = 0 drops every response whole: all kept back
        _, expected = token_cleaning(base, ref, samples, k=k, safeguards=safeguards)
        assert any(bool((r.scores["guard"] == code).any()) for r in expected)  # the safeguard acted
        scorer = TokenCleaningScorer(base, ref, TokenCleaningConfig(k=k, safeguards=safeguards))
        result = score_dataset(scorer, samples, tmp_path / safeguards.all_dropped, shard_size=5, progress=False,
                               num_workers=0)
        assert_same(result.iter_samples(), expected)


def test_results_of_an_older_format_are_refused_not_mixed(tmp_path):
    model = tiny.model("llama")
    samples = tiny.data(4).samples
    score_dataset(XTFScorer(model), samples, tmp_path, progress=False, num_workers=0)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["version"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FingerprintMismatchError, match="format version 1"):
        score_dataset(XTFScorer(model), samples, tmp_path, progress=False, num_workers=0)
    assert score_dataset(XTFScorer(model), samples, tmp_path, overwrite=True, progress=False).complete
