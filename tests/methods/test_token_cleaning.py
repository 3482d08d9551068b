"""Token Cleaning: influence scores against float64 full-logit references, exact top-k counts and ties,
the per-sample variant, and the self-evolving loop driven by custom-loop and Trainer callbacks."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.methods import tiny
from xtf_kernels.datasets import SFTCollator
from xtf_kernels.datasets import collate
from xtf_kernels.datasets import samples_to_records
from xtf_kernels.methods import NoReferenceGainError
from xtf_kernels.methods import TokenCleaningConfig
from xtf_kernels.methods import TokenCleaningScorer
from xtf_kernels.methods import check_reference
from xtf_kernels.methods import finetune
from xtf_kernels.methods import score_samples
from xtf_kernels.methods import self_evolving_cleaning
from xtf_kernels.methods import split_parts
from xtf_kernels.methods import token_cleaning

pytest.importorskip("transformers")
EOS = tiny.data().tokenizer.eos_token_id


def full_logit_logp(model, batch):
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    out = torch.zeros(batch.input_ids.shape, dtype=torch.float64)
    out[:, 1:] = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return out


def scored_count(results):
    return sum(int((~torch.isnan(r.scores["influence"])).sum()) for r in results)


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_influence_matches_full_logits_float64(arch):
    base = tiny.model(arch)
    ref = tiny.perturbed(base, seed=1)
    samples = tiny.data().samples
    results = score_samples(TokenCleaningScorer(base, ref, TokenCleaningConfig.paper()), samples, batch_size=5)
    batch = collate(samples)
    expected = full_logit_logp(ref, batch) - full_logit_logp(base, batch)
    valid = batch.response_mask
    width = batch.input_ids.shape[1]
    actual = torch.stack([torch.nn.functional.pad(r.scores["influence"], (0, width - len(r.scores["influence"])),
                                                  value=math.nan) for r in results])
    assert torch.isnan(actual[~valid]).all()
    torch.testing.assert_close(actual[valid].double(), expected[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [0.0, 0.29, 0.6, 1.0])
def test_global_topk_keeps_exactly_floor_k_n_of_the_best(k):
    base = tiny.model("llama")
    ref = tiny.perturbed(base, seed=2)
    samples = tiny.data().samples
    results = score_samples(TokenCleaningScorer(base, ref, TokenCleaningConfig(k=k)), samples)
    n = scored_count(results)
    kept_scores = torch.cat([r.scores["influence"][~torch.isnan(r.scores["influence"]) & ~r.dropped]
                             for r in results])
    dropped_scores = torch.cat([r.scores["influence"][r.dropped] for r in results])
    assert kept_scores.numel() == round(k * 100) * n // 100
    if kept_scores.numel() and dropped_scores.numel():
        assert kept_scores.min() >= dropped_scores.max()
    assert all(torch.equal(r.dropped, r.fired("low_influence")) for r in results)


def test_ties_are_broken_towards_earlier_tokens():
    base = tiny.model("qwen2")
    samples = tiny.data().samples
    # ref == base: every influence is exactly 0, so the top k is decided by position alone.
    results = score_samples(TokenCleaningScorer(base, base, TokenCleaningConfig(k=0.5)), samples)
    flat_valid = torch.cat([~torch.isnan(r.scores["influence"]) for r in results])
    flat_kept = torch.cat([~r.dropped for r in results]) & flat_valid
    assert all(bool((r.scores["influence"][~torch.isnan(r.scores["influence"])] == 0).all()) for r in results)
    n = int(flat_valid.sum())
    positions = flat_valid.nonzero().squeeze(1)
    assert torch.equal(flat_kept.nonzero().squeeze(1), positions[: n // 2])


def test_per_sample_scope_keeps_floor_k_of_each_sample():
    base = tiny.model("llama")
    ref = tiny.perturbed(base, seed=3)
    samples = tiny.data().samples
    results = score_samples(TokenCleaningScorer(base, ref, TokenCleaningConfig(k=0.6, scope="sample")), samples)
    for r in results:
        valid = ~torch.isnan(r.scores["influence"])
        kept = valid & ~r.dropped
        assert int(kept.sum()) == math.floor(6 * int(valid.sum()) / 10)
        assert r.scores["influence"][kept].min() >= r.scores["influence"][valid & r.dropped].max()


def test_token_cleaning_masks_labels():
    base = tiny.model("llama")
    ref = tiny.perturbed(base, seed=4)
    samples = tiny.data().samples
    cleaned, results = token_cleaning(base, ref, samples, k=0.6)
    for original, new, result in zip(samples, cleaned, results):
        assert torch.equal(new.input_ids, original.input_ids)
        assert torch.equal(new.labels == -100, (original.labels == -100) | result.dropped)


def test_config_and_model_validation():
    with pytest.raises(ValueError, match="k must be"):
        TokenCleaningConfig(k=1.2)
    with pytest.raises(ValueError, match="scope"):
        TokenCleaningConfig(scope="batch")
    base = tiny.model("llama")
    other_vocab = tiny.tiny_causal_lm("llama", vocab_size=50, hidden_size=32, num_layers=1)
    with pytest.raises(ValueError, match="vocabulary"):
        TokenCleaningScorer(base, other_vocab)
    with pytest.raises(TypeError, match="ref must be"):
        TokenCleaningScorer(base, object())


def test_split_parts_is_contiguous_and_balanced():
    parts = split_parts(list(range(11)), 4)
    assert parts == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
    with pytest.raises(ValueError, match="non-empty parts"):
        split_parts([1, 2], 3)


def test_self_evolving_loop_with_a_custom_training_loop():
    base = tiny.model("llama", num_layers=2)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    samples = tiny.data(15).samples
    calls = []

    def train(model, part_samples, index):
        assert model is not base
        calls.append((index, part_samples))
        return finetune(model, part_samples, lr=1e-2, batch_size=8)  # returns losses: ignored

    result = self_evolving_cleaning(base, samples, train, n_parts=3, k=0.6)
    assert [c[0] for c in calls] == [0, 1, 2]
    assert calls[0][1] == samples[:5]  # part 0: every token
    for index, (_, part) in enumerate(calls[1:], start=1):
        originals = samples[5 * index : 5 * index + 5]
        # the eos (protected by default) is kept outside the budget: k applies to the other tokens
        ranked = [s.response_mask & (s.input_ids != EOS) for s in originals]
        scored = sum(int(r.sum()) for r in ranked)
        kept = sum(int(((p.labels != -100) & r).sum()) for p, r in zip(part, ranked))
        assert kept == math.floor(6 * scored / 10)
        assert all(bool((p.labels[p.input_ids == EOS] != -100).all()) for p in part)
    assert len(result.scores) == 2 and len(result.parts) == 3
    # the base stays fixed; the returned model is the trained copy
    assert all(torch.equal(v, base_state[k]) for k, v in base.state_dict().items())
    assert any(not torch.equal(v, base_state[k]) for k, v in result.model.state_dict().items())
    # part 2 was scored against the model trained on parts 0 and 1, not against the base
    assert any(float(r.scores["influence"].nan_to_num().abs().max()) > 0 for r in result.scores[1])


def test_self_evolving_loop_with_a_transformers_trainer(tmp_path):
    transformers = pytest.importorskip("transformers")
    base = tiny.model("qwen2", num_layers=1)
    samples = tiny.data(6).samples
    seen = []

    def train(model, part_samples, index):
        args = transformers.TrainingArguments(output_dir=str(tmp_path / f"part{index}"), max_steps=1,
                                              per_device_train_batch_size=2, report_to=[], save_strategy="no",
                                              use_cpu=True, disable_tqdm=True)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=samples_to_records(part_samples),
                                       data_collator=SFTCollator(pad_token_id=0))
        trainer.train()
        seen.append(index)
        return trainer.model

    result = self_evolving_cleaning(base, samples, train, n_parts=2, k=0.5)
    assert seen == [0, 1]
    assert result.model is not base


def full_logit_mean_nll(model, samples):
    """Mean -log p over the labelled response tokens, from the model's own logits in float64."""
    total, count = 0.0, 0
    for sample in samples:
        with torch.no_grad():
            logits = model(input_ids=sample.input_ids[None]).logits[0].double()
        logp = torch.log_softmax(logits[:-1], -1).gather(-1, sample.input_ids[1:, None]).squeeze(-1)
        labelled = sample.labels[1:] != -100
        total -= float(logp[labelled].sum())
        count += int(labelled.sum())
    return total / count, count


def test_check_reference_measures_both_models_and_refuses_a_reference_without_gain():
    base = tiny.model("llama", num_layers=2)
    held_out = tiny.data(6, seed=9, noise_fraction=0.0).samples
    with pytest.warns(UserWarning, match="does not beat the base"):
        same = check_reference(base, copy.deepcopy(base), held_out)
    expected, tokens = full_logit_mean_nll(base, held_out)
    assert same.tokens == tokens and same.base_nll == pytest.approx(expected, rel=1e-5)
    assert not same.beats_base
    with pytest.raises(NoReferenceGainError):
        check_reference(base, copy.deepcopy(base), held_out, on_no_gain="error")
    trained = copy.deepcopy(base)
    finetune(trained, tiny.data(40, seed=3, noise_fraction=0.0).samples, lr=1e-2, epochs=3, batch_size=8)
    better = check_reference(base, trained, held_out, on_no_gain="error")
    assert better.beats_base and better.reference_nll == pytest.approx(full_logit_mean_nll(trained, held_out)[0],
                                                                        rel=1e-5)
    with pytest.raises(ValueError, match="on_no_gain"):
        check_reference(base, trained, held_out, on_no_gain="stop")


def test_self_evolving_with_a_trusted_first_part_and_round_checks():
    base = tiny.model("llama", num_layers=2)
    pool = tiny.data(12).samples
    trusted = tiny.data(20, seed=5, noise_fraction=0.0).samples
    held_out = tiny.data(6, seed=9, noise_fraction=0.0).samples
    calls = []

    def train(model, part_samples, index):
        calls.append((index, len(part_samples)))
        if index == 0:
            finetune(model, part_samples, lr=1e-2, epochs=3, batch_size=8)

    result = self_evolving_cleaning(base, pool, train, n_parts=3, k=0.5, trusted=trusted, held_out=held_out,
                                    on_no_gain="error")
    assert calls == [(0, 20), (1, 4), (2, 4), (3, 4)]  # the trusted set first, then every part of the pool
    assert result.parts[0] == trusted and len(result.scores) == 3 and len(result.checks) == 3
    rows = result.report()
    assert [r["round"] for r in rows] == [1, 2, 3] and all(r["beats_base"] for r in rows)
    assert len({r["base_nll"] for r in rows}) == 1  # measured once
    for row, part in zip(rows, split_parts(pool, 3)):
        ranked = sum(int((s.response_mask & (s.input_ids != EOS)).sum()) for s in part)
        assert row["kept_tokens"] == row["scored_tokens"] - (ranked - math.floor(ranked / 2))
    # a loop whose reference never improves is refused at the first round
    with pytest.raises(NoReferenceGainError, match="round 1"):
        self_evolving_cleaning(base, pool, lambda m, s, t: None, n_parts=3, held_out=held_out, on_no_gain="error")
