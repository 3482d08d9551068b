"""XTF's calibration modes against references computed here: RI summed / without the diagonal / relative to
uniform attention from eager attention maps, the target-rate modes from plain sorting, occurrence-weighted
Multi-Otsu from scikit-image on repeated values, the response-only domain vector from the embedding rows, TR's
rate mode by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.methods import tiny
from xtf_kernels import select
from xtf_kernels.datasets import collate
from xtf_kernels.methods import Safeguards
from xtf_kernels.methods import XTFConfig
from xtf_kernels.methods import XTFScorer
from xtf_kernels.methods import score_samples
from xtf_kernels.methods.attention_diagonal import self_attention_weight
from xtf_kernels.methods.xtf import lowest_ids_within_rate

pytest.importorskip("transformers")

OFF = Safeguards.off()


def eager_maps(model, batch):
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        return eager(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_attentions=True).attentions


def stacked(results, name, width):
    return torch.stack([torch.nn.functional.pad(r.scores[name], (0, width - len(r.scores[name])), value=math.nan)
                        for r in results])


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_ri_sum_offdiag_and_relative_match_eager_maps(arch):
    model = tiny.model(arch)
    samples = tiny.data().samples
    batch = collate(samples)
    real = batch.attention_mask.double()
    maps = [m.double() * real[:, None, :, None] for m in eager_maps(model, batch)]  # padding queries give nothing
    queries = real.flip(-1).cumsum(-1).flip(-1)  # n_j
    eye = torch.eye(batch.input_ids.shape[1], dtype=torch.float64)
    summed = sum(m.sum(2).mean(1) for m in maps) / len(maps)
    off = sum((m * (1 - eye)).sum(2).mean(1) for m in maps) / len(maps) / (queries - 1)
    # uniform attention: real query i (right padding: it sees keys 0..i) pays 1 / (i + 1) to each
    width = batch.input_ids.shape[1]
    uniform = real / torch.arange(1, width + 1, dtype=torch.float64)
    later = torch.stack([uniform[:, j + 1:].sum(-1) for j in range(width)], dim=1)
    relative = off / (later / (queries - 1))
    valid = batch.response_mask
    for mode, expected in (("sum", summed), ("offdiag", off), ("relative", relative)):
        results = score_samples(XTFScorer(model, XTFConfig.paper(rules=("RI",), ri_score=mode)), samples, batch_size=5)
        actual = stacked(results, "ri", width)
        defined = valid & (queries > 1) if mode != "sum" else valid
        torch.testing.assert_close(actual[defined].double(), expected[defined], atol=2e-6, rtol=1e-4)
        if mode != "sum":  # the last token is seen by no other query: no RI score, never dropped by RI
            last = batch.lengths - 1
            assert torch.isnan(actual[torch.arange(len(samples)), last]).all()
            assert not any(bool(r.fired("RI")[-1]) for r in results)


def test_self_attention_weight_is_the_diagonal_of_the_softmax_map():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 9, 8, dtype=torch.float64), torch.randn(2, 2, 9, 8, dtype=torch.float64)
    mask = torch.ones(2, 9, dtype=torch.int64)
    mask[1, 6:] = 0
    scores = q @ k.repeat_interleave(2, dim=1).transpose(-1, -2) / math.sqrt(8)
    allowed = torch.ones(9, 9).tril().bool()[None, None] & (mask[:, None, None, :] != 0)
    expected = torch.softmax(scores.masked_fill(~allowed, -math.inf), -1).diagonal(dim1=-2, dim2=-1)
    expected = expected * mask[:, None, :]
    actual = self_attention_weight(q.float(), k.float(), attention_mask=mask)
    torch.testing.assert_close(actual.double(), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("rule", ["RI", "KN"])
def test_target_rate_modes_drop_the_extreme_fraction_of_each_sample(rule):
    samples = tiny.data().samples
    config = (XTFConfig.paper(rules=("RI",), ri_threshold="rate", ri_drop_rate=0.3, safeguards=OFF) if rule == "RI"
              else XTFConfig.paper(rules=("KN",), kn_threshold="rate", kn_drop_rate=0.3, safeguards=OFF))
    results = score_samples(XTFScorer(tiny.model(seed=2), config), samples, batch_size=4)
    for sample, result in zip(samples, results):
        valid = sample.response_mask
        positions = valid.nonzero().squeeze(1).tolist()
        if rule == "RI":  # lowest S_RI first
            key = {p: float(result.scores["ri"][p]) for p in positions}
        else:  # highest PCP first = lowest 1 - PCP
            key = {p: float(result.scores["kn"][p]) for p in positions}
        order = sorted(positions, key=lambda p: (key[p], p))
        expected = torch.zeros_like(valid)
        expected[order[: math.floor(3 * len(positions) / 10)]] = True
        assert torch.equal(result.fired(rule), expected)


def test_tr_rate_mode_by_hand():
    s_tr = torch.tensor([0.9, 0.1, 0.5, math.nan, 0.1, 0.3, 0.2])
    counts = torch.tensor([10, 3, 4, 0, 2, 6, 5])  # 30 response tokens; budget floor(0.4 * 30) = 12
    # ascending S_TR, ties to the lower id: 1 (3), 4 (2), 6 (5) -> 10 tokens; 5 (6) would make 16 > 12: stop
    assert lowest_ids_within_rate(s_tr, counts, 0.4).nonzero().squeeze(1).tolist() == [1, 4, 6]
    # id 4 protected: 1 (3), 6 (5) -> 8; 5 would make 14: stop
    assert lowest_ids_within_rate(s_tr, counts, 0.4, exclude=torch.tensor([4])).nonzero().squeeze(1).tolist() == [1, 6]
    assert not lowest_ids_within_rate(s_tr, counts, 0.0).any()


def test_tr_rate_mode_in_the_scorer_meets_its_budget():
    samples = tiny.data(30).samples
    scorer = XTFScorer(tiny.model(seed=3), XTFConfig.paper(rules=("TR",), tr_threshold="rate", tr_drop_rate=0.2))
    results = score_samples(scorer, samples)
    total = sum(int(s.response_mask.sum()) for s in samples)
    dropped = sum(int(r.dropped.sum()) for r in results)
    assert 0 < dropped <= math.floor(total / 5)
    noisy = scorer.tr_noisy_ids
    for sample, result in zip(samples, results):
        assert torch.equal(result.fired("TR"), noisy[sample.input_ids] & sample.response_mask)


def test_occurrence_weighted_otsu_equals_otsu_of_the_repeated_values():
    skimage_filters = pytest.importorskip("skimage.filters")
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(40, generator=generator, dtype=torch.float64)
    weights = torch.randint(1, 9, (40,), generator=generator)
    repeated = values.repeat_interleave(weights)
    expected = skimage_filters.threshold_multiotsu(repeated.numpy(), classes=3, nbins=32)
    actual = select.multi_otsu(values, classes=3, bins=32, weights=weights.double())
    torch.testing.assert_close(actual, torch.from_numpy(expected), atol=1e-9, rtol=0)
    assert not torch.equal(actual, select.multi_otsu(values, classes=3, bins=32))  # the weights matter here
    with pytest.raises(ValueError, match="weights"):
        select.multi_otsu(values, weights=-torch.ones(40, dtype=torch.float64))
    with pytest.raises(ValueError, match="weights shape"):
        select.multi_otsu(values, weights=torch.ones(3, dtype=torch.float64))


def test_weighted_otsu_in_the_scorer():
    samples = tiny.data().samples
    scorer = XTFScorer(tiny.model(seed=2), XTFConfig.paper(rules=("TR",), otsu_weights="occurrences", otsu_bins=64))
    score_samples(scorer, samples)
    occurring = ~torch.isnan(scorer.s_tr)
    counts = torch.bincount(torch.cat([s.input_ids for s in samples]), minlength=scorer.vocab_size)
    expected = select.multi_otsu(scorer.s_tr[occurring].double().repeat_interleave(counts[occurring]), bins=64)
    torch.testing.assert_close(scorer.tr_thresholds.double(), expected, atol=1e-6, rtol=0)


def test_domain_vector_over_response_tokens_only():
    samples = tiny.data().samples
    model = tiny.model(seed=2)
    scorer = XTFScorer(model, XTFConfig.paper(rules=("TR",), tr_domain="response"))
    score_samples(scorer, samples)
    response_ids = torch.cat([s.input_ids[s.response_mask] for s in samples])
    expected = model.get_input_embeddings().weight.detach().double()[response_ids].mean(0)
    torch.testing.assert_close(scorer.domain.double(), expected, atol=1e-6, rtol=1e-6)
    prompt_only = set(torch.cat([s.input_ids for s in samples]).tolist()) - set(response_ids.tolist())
    assert prompt_only and all(math.isnan(float(scorer.s_tr[i])) for i in prompt_only)


def test_mode_validation():
    for name, bad in (("ri_score", "max"), ("ri_threshold", "otsu"), ("kn_threshold", "fence"),
                      ("tr_threshold", "fence"), ("tr_domain", "prompt"), ("otsu_weights", "tokens")):
        with pytest.raises(ValueError, match=name):
            XTFConfig(**{name: bad})
    for name in ("ri_drop_rate", "kn_drop_rate", "tr_drop_rate", "kn_anchor_fraction"):
        with pytest.raises(ValueError, match=name):
            XTFConfig(**{name: 1.5})
