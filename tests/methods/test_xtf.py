"""XTF's three scores and rules against slow references computed here:
RI from eager ``output_attentions=True`` maps, KN from the model's full logits in float64, TR from the
embedding matrix directly, the rules from torch.quantile / scikit-image's Multi-Otsu."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from tests.methods import tiny
from xtf_kernels.datasets import collate
from xtf_kernels.methods import XTFConfig
from xtf_kernels.methods import XTFScorer
from xtf_kernels.methods import score_samples
from xtf_kernels.methods import task_relevance

pytest.importorskip("transformers")


def eager_received(model, batch, layers):
    """(B, L) float64: column means of the eager attention maps over the real later queries, heads and layers."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        maps = eager(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_attentions=True).attentions
    real = batch.attention_mask.double()
    later_real = real.flip(-1).cumsum(-1).flip(-1)  # real queries i >= j
    total = 0
    for layer in layers:
        a = maps[layer].double() * real[:, None, :, None]  # padding queries contribute nothing
        total = total + (a.sum(2) / later_real.clamp(min=1)[:, None]).mean(1)
    return total / len(layers)


def full_logit_pcp(model, batch):
    """(B, L) float64 p(token t | < t) from the model's own forward (full logits), 0 at t = 0."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    out = torch.zeros(batch.input_ids.shape, dtype=torch.float64)
    out[:, 1:] = logp.exp()
    return out


def stacked(results, name, width):
    return torch.stack([torch.nn.functional.pad(r.scores[name], (0, width - len(r.scores[name])), value=float("nan"))
                        for r in results])


@pytest.mark.parametrize("arch", tiny.ARCHS)
@pytest.mark.parametrize("attn_layers", ["mean", "last", (0, -1)])
def test_ri_matches_eager_attention_maps(arch, attn_layers):
    model = tiny.model(arch)
    samples = tiny.data().samples
    results = score_samples(XTFScorer(model, XTFConfig.paper(attn_layers=attn_layers, rules=("RI",))), samples,
                            batch_size=5)
    batch = collate(samples)
    layers = {"mean": [0, 1, 2], "last": [2], (0, -1): [0, 2]}[attn_layers]
    expected = eager_received(model, batch, layers)
    actual = stacked(results, "ri", batch.input_ids.shape[1])
    valid = batch.response_mask
    assert torch.isnan(actual[~valid]).all()
    torch.testing.assert_close(actual[valid].double(), expected[valid], atol=2e-6, rtol=1e-4)
    assert model.config._attn_implementation == "sdpa"  # restored after scoring


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_kn_matches_full_logits_float64(arch):
    model = tiny.model(arch, seed=1)
    samples = tiny.data().samples
    results = score_samples(XTFScorer(model, XTFConfig(rules=("KN",))), samples, batch_size=4)
    batch = collate(samples)
    expected = 1.0 - full_logit_pcp(model, batch)
    actual = stacked(results, "kn", batch.input_ids.shape[1])
    valid = batch.response_mask
    torch.testing.assert_close(actual[valid].double(), expected[valid], atol=2e-6, rtol=1e-5)


def test_kn_applies_the_final_logit_softcap():
    transformers = pytest.importorskip("transformers")
    config = transformers.Gemma2Config(
        vocab_size=len(tiny.data().tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128, sliding_window=8,
        final_logit_softcapping=0.5,  # small, so the cap changes every probability a lot
    )
    torch.manual_seed(3)
    model = transformers.Gemma2ForCausalLM(config).eval()
    samples = tiny.data().samples[:4]
    results = score_samples(XTFScorer(model, XTFConfig(rules=("KN",))), samples)
    batch = collate(samples)
    expected = 1.0 - full_logit_pcp(model, batch)
    actual = stacked(results, "kn", batch.input_ids.shape[1])
    valid = batch.response_mask
    torch.testing.assert_close(actual[valid].double(), expected[valid], atol=2e-6, rtol=1e-5)
    # Gemma-2's attention is sliding-window / softcapped: RI refuses it with a clear message.
    with pytest.raises(ValueError, match="sliding-window"):
        score_samples(XTFScorer(model, XTFConfig(rules=("RI",))), samples)


def reference_s_tr(embedding, ids_lists, distance, normalization):
    table = embedding.detach().double()
    all_ids = torch.cat(ids_lists)
    domain = table[all_ids].mean(0)  # mean embedding row over every token occurrence
    occurring = torch.unique(all_ids)
    rows = table[occurring]
    if distance == "cosine":
        d = 1 - torch.nn.functional.cosine_similarity(rows, domain[None], dim=1)
    else:
        d = torch.cdist(rows, domain[None]).squeeze(1)
    if normalization == "minmax":
        n = (d - d.min()) / (d.max() - d.min())
    elif normalization == "max":
        n = d / d.max()
    else:
        from scipy.stats import rankdata

        n = torch.from_numpy(rankdata(d.numpy(), method="average") - 1) / (len(d) - 1)
    out = torch.full((table.shape[0],), float("nan"), dtype=torch.float64)
    out[occurring] = 1 - n
    return out, domain


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("normalization", ["minmax", "max", "rank"])
def test_tr_matches_embedding_distances(distance, normalization):
    model = tiny.model("qwen2", seed=2)
    samples = tiny.data().samples
    config = XTFConfig(rules=("TR",), tr_distance=distance, tr_normalization=normalization)
    scorer = XTFScorer(model, config)
    results = score_samples(scorer, samples)
    embedding = model.get_input_embeddings().weight
    expected, domain = reference_s_tr(embedding, [s.input_ids for s in samples], distance, normalization)
    torch.testing.assert_close(scorer.s_tr.double(), expected, atol=1e-6, rtol=1e-6, equal_nan=True)
    torch.testing.assert_close(scorer.domain.double(), domain, atol=1e-6, rtol=1e-6)
    for sample, result in zip(samples, results):
        valid = sample.response_mask
        torch.testing.assert_close(result.scores["tr"][valid].double(), expected[sample.input_ids[valid]],
                                   atol=1e-6, rtol=1e-6)


def test_task_relevance_rejects_empty_counts():
    with pytest.raises(ValueError, match="no tokens"):
        task_relevance(torch.randn(5, 3), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="counts must be"):
        task_relevance(torch.randn(5, 3), torch.ones(4, dtype=torch.int64))


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_rules_and_union_match_independent_rules(arch):
    skimage_filters = pytest.importorskip("skimage.filters")
    model = tiny.model(arch, seed=4)
    samples = tiny.data().samples
    # A random model's PCP is about 1 / V = 0.014 and its RI a smooth curve: these knobs make every rule fire on
    # some tokens and not on others.
    config = XTFConfig.paper(ri_fence_c=0.0, kn_pcp_max=0.014, otsu_bins=64)
    scorer = XTFScorer(model, config)
    results = score_samples(scorer, samples, batch_size=3)
    s_tr = scorer.s_tr.double()
    occurring = ~torch.isnan(s_tr)
    thresholds = skimage_filters.threshold_multiotsu(s_tr[occurring].float().numpy(), classes=3, nbins=64)
    tr_class = np.digitize(np.nan_to_num(s_tr.float().numpy()), thresholds)
    counts = dict.fromkeys(("RI", "KN", "TR"), 0)
    total = 0
    for sample, result in zip(samples, results):
        valid = sample.response_mask
        ri = result.scores["ri"][valid].double()
        q1, q3 = torch.quantile(ri, 0.25), torch.quantile(ri, 0.75)
        expect = {
            "RI": ri < q1 - 0.0 * (q3 - q1),
            "KN": (1 - result.scores["kn"][valid].double()) > 0.014,
            "TR": torch.from_numpy(tr_class == 1)[sample.input_ids[valid]],
        }
        for rule, mask in expect.items():
            assert torch.equal(result.fired(rule)[valid], mask), rule
            counts[rule] += int(mask.sum())
        total += int(valid.sum())
        union = expect["RI"] | expect["KN"] | expect["TR"]
        assert torch.equal(result.dropped[valid], union)
        assert not result.dropped[~valid].any()  # prompt / position 0 are never dropped
        masked = result.masked_labels(sample.labels)
        assert torch.equal(masked == -100, (sample.labels == -100) | result.dropped)
    assert all(0 < n < total for n in counts.values()), (counts, total)


def test_scores_do_not_depend_on_batching():
    model = tiny.model("llama", seed=5)
    samples = tiny.data().samples
    one = score_samples(XTFScorer(model), samples, batch_size=1)
    many = score_samples(XTFScorer(model), samples, batch_size=7)
    for a, b in zip(one, many):
        for name in ("ri", "kn", "tr"):
            torch.testing.assert_close(a.scores[name], b.scores[name], atol=1e-6, rtol=1e-5, equal_nan=True)


def test_config_validation():
    with pytest.raises(ValueError, match="rules"):
        XTFConfig(rules=("RI", "XX"))
    with pytest.raises(ValueError, match="attn_layers"):
        XTFConfig(attn_layers="first")
    with pytest.raises(ValueError, match="kn_pcp_max"):
        XTFConfig(kn_pcp_max=1.5)
    with pytest.raises(ValueError, match="tr_distance"):
        XTFConfig(tr_distance="manhattan")
    with pytest.raises(ValueError, match="tr_noisy_classes"):
        XTFConfig(tr_noisy_classes=(3,))
    with pytest.raises(ValueError, match="otsu_bins"):
        XTFConfig(otsu_classes=4, otsu_bins=3)
    with pytest.raises(ValueError, match="layer index"):
        XTFScorer(tiny.model(), XTFConfig(attn_layers=(5,)))
    with pytest.raises(TypeError, match="causal LM"):
        XTFScorer(torch.nn.Linear(2, 2))
    defaults = XTFConfig()
    assert (defaults.attn_layers, defaults.ri_fence_c, defaults.kn_pcp_max, defaults.tr_distance,
            defaults.tr_normalization, defaults.otsu_classes, defaults.otsu_bins, defaults.tr_noisy_classes) == (
        "mean", 1.0, 0.95, "cosine", "minmax", 3, 256, (1,))


def test_tr_needs_the_dataset_pass():
    scorer = XTFScorer(tiny.model())
    with pytest.raises(RuntimeError, match="dataset pass"):
        scorer.score_batch(collate(tiny.data().samples[:2]))
    with pytest.raises(ValueError, match="vocabulary"):
        scorer.begin_dataset_pass()
        bad = tiny.data().samples[0]
        scorer.observe(type(bad)(bad.input_ids + 1000, bad.labels))


def test_dataset_statistics_of_disjoint_parts_add_up_to_the_whole_pass():
    """What a distributed run does: each part observed apart, statistics summed, then one fit."""
    model = tiny.model()
    samples = tiny.data().samples
    whole = XTFScorer(model)
    whole.begin_dataset_pass()
    for sample in samples:
        whole.observe(sample)
    whole.end_dataset_pass()

    parts = []
    for part in (samples[: len(samples) // 3], samples[len(samples) // 3:]):
        scorer = XTFScorer(model)
        scorer.begin_dataset_pass()
        for sample in part:
            scorer.observe(sample)
        parts.append(scorer.dataset_statistics())
    merged = XTFScorer(model)
    merged.begin_dataset_pass()
    merged.load_dataset_statistics({key: parts[0][key] + parts[1][key] for key in parts[0]})
    merged.end_dataset_pass()
    assert torch.equal(merged.tr_noisy_ids, whole.tr_noisy_ids)
    torch.testing.assert_close(merged.s_tr, whole.s_tr, equal_nan=True, rtol=0, atol=0)
    with pytest.raises(ValueError, match="token_counts"):
        merged.load_dataset_statistics({"token_counts": torch.zeros(3, dtype=torch.int64)})
    with pytest.raises(ValueError, match="response_counts"):
        merged.load_dataset_statistics({"token_counts": parts[0]["token_counts"]})


@pytest.mark.parametrize(("knob", "value", "mode"), [("kn_pcp_max", 0.9, "kn_threshold"),
                                                     ("ri_fence_c", 2.0, "ri_threshold"),
                                                     ("otsu_bins", 64, "tr_threshold"),
                                                     ("tr_drop_rate", 0.1, "tr_threshold")])
def test_a_knob_of_another_mode_is_refused_not_ignored(knob, value, mode):
    """The defaults rank every rule by rate; a paper-threshold knob set alone would silently do nothing."""
    base = XTFConfig.paper() if knob == "tr_drop_rate" else XTFConfig()
    with pytest.raises(ValueError, match=f"{knob} is only read with {mode}="):
        dataclasses.replace(base, **{knob: value})
    needed = {"kn_pcp_max": "absolute", "ri_fence_c": "fence", "otsu_bins": "otsu", "tr_drop_rate": "rate"}[knob]
    assert getattr(dataclasses.replace(base, **{knob: value, mode: needed}), knob) == value
