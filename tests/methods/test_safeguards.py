"""Safeguards of the token filters: protected tokens are never dropped, the caps hold exactly, whole-response
samples follow the chosen option, KN anchors are seeded and batch-independent. Expected drops are recomputed
here from the scores with plain sorting."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

from tests.methods import tiny
from xtf_kernels.datasets import collate
from xtf_kernels.methods import DropCapExceededError
from xtf_kernels.methods import Safeguards
from xtf_kernels.methods import TokenCleaningConfig
from xtf_kernels.methods import TokenCleaningScorer
from xtf_kernels.methods import XTFConfig
from xtf_kernels.methods import XTFScorer
from xtf_kernels.methods import safeguards as safeguards_module
from xtf_kernels.methods import score_samples
from xtf_kernels.methods import token_cleaning
from xtf_kernels.methods.safeguards import GUARD_CODES
from xtf_kernels.methods.safeguards import cap_sample_drops
from xtf_kernels.methods.safeguards import check_total_drop
from xtf_kernels.methods.safeguards import remove_empty
from xtf_kernels.methods.safeguards import resolve_protected_ids

pytest.importorskip("transformers")

TOKENIZER = tiny.data().tokenizer
WORD = TOKENIZER.token_to_id


def every_token_fires(**safeguards) -> XTFConfig:
    """KN alone with PCP > 0: every response token fires, so only the safeguards keep anything."""
    return XTFConfig.paper(rules=("KN",), kn_pcp_max=0.0, safeguards=Safeguards(**safeguards))


def test_protected_tokens_are_never_dropped():
    samples = tiny.data().samples
    guard = dict(protect_special_tokens=True, protected_ids=(WORD["7"],), protected_tokens=("= answer",),
                 max_sample_drop=None, max_total_drop=None)
    scorer = XTFScorer(tiny.model(), every_token_fires(**guard), tokenizer=TOKENIZER)
    protected = {WORD[w] for w in ("<pad>", "<bos>", "<eos>", "<unk>", "7", "=", "answer")}
    assert set(scorer.protected_ids.tolist()) == protected
    for sample, result in zip(samples, score_samples(scorer, samples, batch_size=5)):
        valid = sample.response_mask
        is_protected = torch.isin(sample.input_ids, torch.tensor(sorted(protected))) & valid
        assert is_protected.any()
        assert not result.dropped[is_protected].any()
        assert result.dropped[valid & ~is_protected].all()  # everything else fired and nothing caps it
        assert (result.scores["guard"][is_protected] == GUARD_CODES["protected"]).all()
        assert torch.isnan(result.scores["guard"][~valid]).all()


def test_eos_of_the_model_is_protected_without_a_tokenizer():
    model = tiny.model()
    model.generation_config.eos_token_id = [WORD["<eos>"], WORD["."]]  # e.g. Llama-3's two end ids
    ids = resolve_protected_ids(Safeguards(), model=model)
    assert ids.tolist() == sorted({WORD["<eos>"], WORD["."]})
    assert resolve_protected_ids(Safeguards.off(), model=model).numel() == 0
    with pytest.raises(ValueError, match="needs a tokenizer"):
        resolve_protected_ids(Safeguards(protected_tokens=("=",)), model=model)
    with pytest.raises(ValueError, match="vocabulary"):
        resolve_protected_ids(Safeguards(protected_ids=(10_000,)), model=model, vocab_size=100)


def test_per_sample_cap_keeps_the_least_noisy_back():
    samples = tiny.data().samples
    config = every_token_fires(protect_special_tokens=False, max_sample_drop=0.3, max_total_drop=None)
    results = score_samples(XTFScorer(tiny.model(seed=3), config), samples, batch_size=4)
    for sample, result in zip(samples, results):
        valid = sample.response_mask
        n = int(valid.sum())
        assert int(result.dropped.sum()) == math.floor(3 * n / 10)
        # noise = 1 rule + 0.5 (1 - PCP): the lowest-PCP tokens stay dropped (ties to the earlier position)
        pcp = 1.0 - result.scores["kn"][valid].double()
        positions = valid.nonzero().squeeze(1)
        order = sorted(range(n), key=lambda i: (float(pcp[i]), i))
        expected = torch.zeros_like(valid)
        expected[positions[order[: math.floor(3 * n / 10)]]] = True
        assert torch.equal(result.dropped, expected)
        assert (result.scores["guard"][valid & ~expected] == GUARD_CODES["capped"]).all()


def test_cap_sample_drops_ties_and_rows():
    dropped = torch.tensor([[True, True, True, True, False], [True, False, False, False, False]])
    valid = torch.ones_like(dropped)
    noise = torch.tensor([[1.0, 3.0, 1.0, 2.0, 9.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    rescued = cap_sample_drops(dropped, valid, noise, 0.4)  # floor(0.4 * 5) = 2 per row
    # row 0 keeps the two noisiest dropped (3.0 at 1, 2.0 at 3); row 1 is under its cap
    assert rescued.tolist() == [[True, False, True, False, False], [False] * 5]


def test_whole_response_option():
    samples = tiny.data().samples
    base = dict(protect_special_tokens=False, max_sample_drop=None, max_total_drop=None)
    removed = score_samples(XTFScorer(tiny.model(), every_token_fires(all_dropped="remove", **base)), samples)
    kept = score_samples(XTFScorer(tiny.model(), every_token_fires(all_dropped="keep", **base)), samples)
    for sample, gone, whole in zip(samples, removed, kept):
        valid = sample.response_mask
        assert gone.dropped[valid].all() and not whole.dropped.any()
        assert (whole.scores["guard"][valid] == GUARD_CODES["whole_response"]).all()
    filtered = [s.with_labels(r.masked_labels(s.labels)) for s, r in zip(samples, removed)]
    assert remove_empty(filtered) == []
    assert remove_empty(samples) == list(samples)


def test_global_cap_warns_or_raises_on_the_totals():
    samples = tiny.data(12).samples  # 242 response tokens: checked although far below the running check's 2048
    base = dict(protect_special_tokens=False, max_sample_drop=None, max_total_drop=0.5)
    with pytest.warns(UserWarning, match="xtf over 12 samples drops 100.0% of 242 response tokens"):
        score_samples(XTFScorer(tiny.model(), every_token_fires(**base)), samples, batch_size=32)
    with pytest.raises(DropCapExceededError, match="max_total_drop"):
        score_samples(XTFScorer(tiny.model(), every_token_fires(on_exceed="error", **base)), samples, batch_size=32)
    guarded = TokenCleaningConfig(k=0.3, scope="sample", safeguards=Safeguards(max_sample_drop=None, max_total_drop=0.5,
                                                                               on_exceed="error"))
    scorer = TokenCleaningScorer(tiny.model(), tiny.perturbed(tiny.model(), 1), guarded, tokenizer=TOKENIZER)
    with pytest.raises(DropCapExceededError, match="token_cleaning over 12 samples"):  # per-sample top k too
        score_samples(scorer, samples)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        token_cleaning(tiny.model(), tiny.perturbed(tiny.model(), 1), samples, k=0.3, scope="sample",
                       safeguards=dataclasses.replace(guarded.safeguards, on_exceed="warn"))
    assert [str(w.message)[:28] for w in caught if "max_total_drop" in str(w.message)] == [
        "token_cleaning over 12 sampl"]  # checked once, by score_samples
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not check_total_drop(50, 100, Safeguards(max_total_drop=0.5))  # at the cap is allowed
        assert not check_total_drop(99, 100, Safeguards(max_total_drop=None))
    with pytest.raises(DropCapExceededError):
        check_total_drop(51, 100, Safeguards(max_total_drop=0.5, on_exceed="error"))


def test_score_samples_checks_the_total_not_the_running_fraction(monkeypatch):
    """The longest samples first: with eos protected they drop the largest share, so the first batch is over a
    cap the whole stays under. score_samples says nothing; the scorer called batch by batch (its running
    check, here from the first token on) warns at the first batch."""
    monkeypatch.setattr(safeguards_module, "GLOBAL_CHECK_MIN_TOKENS", 1)
    samples = sorted(tiny.data(24).samples, key=lambda s: -int(s.response_mask.sum()))
    config = every_token_fires(protect_special_tokens=True, max_sample_drop=None, max_total_drop=None)
    results = score_samples(XTFScorer(tiny.model(), config, tokenizer=TOKENIZER), samples)
    counts = [(int((r.dropped & s.response_mask).sum()), int(s.response_mask.sum())) for s, r in zip(samples, results)]
    first = sum(c[0] for c in counts[:4]) / sum(c[1] for c in counts[:4])
    total = sum(c[0] for c in counts) / sum(c[1] for c in counts)
    assert first > total
    cap = dataclasses.replace(config.safeguards, max_total_drop=(first + total) / 2)
    scorer = XTFScorer(tiny.model(), dataclasses.replace(config, safeguards=cap), tokenizer=TOKENIZER)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        score_samples(scorer, samples, batch_size=4)
    scorer = XTFScorer(tiny.model(), dataclasses.replace(config, safeguards=cap), tokenizer=TOKENIZER)
    with pytest.warns(UserWarning, match="XTF drops"):
        scorer.score_batch(collate(samples[:4], scorer.pad_token_id))


def test_kn_anchors_are_seeded_and_independent_of_batching():
    samples = tiny.data(40).samples
    guard = dict(protect_special_tokens=False, max_sample_drop=None, max_total_drop=None)
    config = XTFConfig.paper(rules=("KN",), kn_pcp_max=0.0, kn_anchor_fraction=0.3, seed=7,
                             safeguards=Safeguards(**guard))
    one = score_samples(XTFScorer(tiny.model(), config), samples, batch_size=1)
    many = score_samples(XTFScorer(tiny.model(), config), samples, batch_size=16)
    scored = anchored = 0
    for a, b, sample in zip(one, many, samples):
        assert torch.equal(a.dropped_by, b.dropped_by)
        valid = sample.response_mask
        scored += int(valid.sum())
        anchored += int((a.scores["guard"][valid] == GUARD_CODES["anchor"]).sum())
        assert torch.equal(a.scores["guard"] == GUARD_CODES["anchor"], valid & ~a.dropped)
    assert 0.25 < anchored / scored < 0.35  # 782 Bernoulli(0.3) draws: 5 standard deviations is +-0.08
    other_seed = score_samples(XTFScorer(tiny.model(), XTFConfig.paper(
        rules=("KN",), kn_pcp_max=0.0, kn_anchor_fraction=0.3, seed=8, safeguards=Safeguards(**guard))), samples)
    assert any(not torch.equal(a.dropped_by, c.dropped_by) for a, c in zip(one, other_seed))


def test_tr_anchors_keep_a_seeded_share_of_every_type_tr_drops():
    samples = tiny.data(40).samples
    guard = Safeguards(protect_special_tokens=False, max_sample_drop=None, max_total_drop=None)
    without = XTFConfig.paper(rules=("TR",), tr_threshold="rate", tr_drop_rate=0.5, safeguards=guard)
    with_anchors = dataclasses.replace(without, tr_anchor_fraction=0.3, seed=7)
    plain = score_samples(XTFScorer(tiny.model(), without), samples)
    one = score_samples(XTFScorer(tiny.model(), with_anchors), samples, batch_size=1)
    many = score_samples(XTFScorer(tiny.model(), with_anchors), samples, batch_size=16)
    ids = torch.cat([s.input_ids[s.response_mask] for s in samples])
    fired = torch.cat([p.dropped[s.response_mask] for p, s in zip(plain, samples)])
    kept = torch.cat([p.dropped[s.response_mask] & ~a.dropped[s.response_mask] for p, a, s in zip(plain, one, samples)])
    for a, b, p in zip(one, many, plain):
        assert torch.equal(a.dropped_by, b.dropped_by)
        assert not (a.dropped & ~p.dropped).any()  # anchors only keep back
        assert torch.equal(a.scores["guard"] == GUARD_CODES["anchor"], p.dropped & ~a.dropped)
    assert 0.2 < int(kept.sum()) / int(fired.sum()) < 0.4
    # without anchors TR drops whole types; with them, every type with a few occurrences keeps some
    frequent = [i for i in ids[fired].unique().tolist() if int((ids == i).sum()) >= 20]
    assert frequent and all(bool(fired[ids == i].all()) for i in frequent)
    assert all(bool(kept[ids == i].any()) for i in frequent)


def test_token_cleaning_protects_and_caps_after_the_global_top_k():
    base = tiny.model("llama")
    ref = tiny.perturbed(base, seed=1)
    samples = tiny.data().samples
    eos = WORD["<eos>"]
    guard = Safeguards(max_sample_drop=0.25, max_total_drop=None)
    cleaned, results = token_cleaning(base, ref, samples, k=0.5, safeguards=guard, tokenizer=TOKENIZER)
    for sample, result, clean in zip(samples, results, cleaned):
        valid = sample.response_mask
        assert not result.dropped[sample.input_ids == eos].any()
        assert torch.isnan(result.scores["influence"][valid & (sample.input_ids == eos)]).all()
        n = int(valid.sum())
        assert int(result.dropped.sum()) <= math.floor(n / 4)
        assert torch.equal(clean.labels == -100, (sample.labels == -100) | result.dropped)
    # without the cap the same scorer drops more than a quarter of some sample: the cap did something
    plain = score_samples(TokenCleaningScorer(base, ref, TokenCleaningConfig(k=0.5), tokenizer=TOKENIZER), samples)
    assert any(int(r.dropped.sum()) > math.floor(int(s.response_mask.sum()) / 4) for r, s in zip(plain, samples))


def test_safeguards_validation():
    with pytest.raises(ValueError, match="max_sample_drop"):
        Safeguards(max_sample_drop=1.5)
    with pytest.raises(ValueError, match="on_exceed"):
        Safeguards(on_exceed="ignore")
    with pytest.raises(ValueError, match="all_dropped"):
        Safeguards(all_dropped="drop")
    with pytest.raises(ValueError, match="protected_ids"):
        Safeguards(protected_ids=(-1,))
    with pytest.raises(TypeError, match="protected_tokens"):
        Safeguards(protected_tokens="=")
    with pytest.raises(TypeError, match="safeguards"):
        XTFConfig(safeguards={"max_sample_drop": 0.2})
    with pytest.raises(ValueError, match="encodes to no token"):
        resolve_protected_ids(Safeguards(protected_tokens=(" ",)), tokenizer=TOKENIZER)


def test_defaults_are_safe_and_the_paper_preset_is_the_old_behaviour():
    safe, paper = XTFConfig(), XTFConfig.paper()
    assert safe.safeguards.protect_special_tokens and safe.safeguards.max_sample_drop == 0.4
    assert (safe.ri_score, safe.kn_anchor_fraction, safe.tr_anchor_fraction) == ("offdiag", 0.25, 0.25)
    assert (safe.ri_threshold, safe.kn_threshold, safe.tr_threshold) == ("rate", "rate", "rate")
    assert (safe.ri_drop_rate, safe.kn_drop_rate, safe.tr_drop_rate) == (0.05, 0.05, 0.05)
    assert paper.safeguards == Safeguards.off()
    assert (paper.ri_score, paper.kn_anchor_fraction, paper.tr_anchor_fraction, paper.ri_threshold,
            paper.kn_threshold, paper.tr_threshold, paper.tr_domain, paper.otsu_weights) == (
        "mean", 0.0, 0.0, "fence", "absolute", "otsu", "text", "ids")
    assert XTFConfig.paper(kn_pcp_max=0.9).kn_pcp_max == 0.9


def test_every_option_on_keeps_every_invariant(tmp_path):
    from xtf_kernels.pipeline import score_dataset

    samples = tiny.data(20).samples
    config = XTFConfig(ri_score="relative", ri_threshold="rate", ri_drop_rate=0.2, kn_threshold="rate",
                       kn_drop_rate=0.3, kn_anchor_fraction=0.5, tr_threshold="rate", tr_drop_rate=0.2,
                       tr_domain="response", attn_layers=(0, -1), seed=3,
                       safeguards=Safeguards(protected_ids=(WORD["="],), protected_tokens=("answer",),
                                             max_sample_drop=0.35, max_total_drop=0.5, all_dropped="keep"))
    one = score_samples(XTFScorer(tiny.model(seed=6), config, tokenizer=TOKENIZER), samples, batch_size=1)
    many = score_samples(XTFScorer(tiny.model(seed=6), config, tokenizer=TOKENIZER), samples, batch_size=7)
    streamed = score_dataset(XTFScorer(tiny.model(seed=6), config, tokenizer=TOKENIZER), samples, tmp_path,
                             shard_size=6, batch_size=4, progress=False).iter_samples()
    protected = torch.tensor([WORD[w] for w in ("<pad>", "<bos>", "<eos>", "<unk>", "=", "answer")])
    codes, fired = set(), dict.fromkeys(("RI", "KN", "TR"), 0)
    for sample, a, b, c in zip(samples, one, many, streamed):
        assert torch.equal(a.dropped_by, b.dropped_by) and torch.equal(a.dropped_by, c.dropped_by)
        valid = sample.response_mask
        assert not a.dropped[torch.isin(sample.input_ids, protected)].any()
        assert int(a.dropped.sum()) <= math.floor(0.35 * int(valid.sum()))
        assert not a.dropped[~valid].any()
        codes |= set(a.scores["guard"][valid].tolist())
        for rule in fired:
            fired[rule] += int(a.fired(rule).sum())
    assert all(fired.values()), fired  # every rule still drops something under every safeguard
    assert {GUARD_CODES[name] for name in ("none", "protected", "capped", "anchor")} <= codes
