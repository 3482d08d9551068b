"""The calibration sweep against numbers recomputed here from the model's full logits in float64: the drop rate
of each KN threshold, the base model's NLL and top-1 accuracy on the dropped and kept dev tokens, and the
tuned model's dev metrics from the model the training callback returned."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

from tests.methods import tiny
from xtf_kernels.datasets import collate
from xtf_kernels.methods import Safeguards
from xtf_kernels.methods import TokenCleaningConfig
from xtf_kernels.methods import XTFConfig
from xtf_kernels.methods import finetune
from xtf_kernels.methods.calibration import sweep_threshold
from xtf_kernels.methods.calibration import token_correct

pytest.importorskip("transformers")


def full_logits(model, samples):
    """Per sample: ((L,) float64 log p(token t | < t), 0 at t = 0; (L,) bool argmax hit)."""
    out = []
    for sample in samples:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=sample.input_ids[None]).logits[0].double(), -1)
        own = torch.zeros(len(sample), dtype=torch.float64)
        own[1:] = logp[:-1].gather(-1, sample.input_ids[1:, None]).squeeze(-1)
        hit = torch.zeros(len(sample), dtype=torch.bool)
        hit[1:] = logp[:-1].argmax(-1) == sample.input_ids[1:]
        out.append((own, hit))
    return out


def test_sweep_matches_full_logit_references():
    model = tiny.model(seed=1)
    dev = tiny.data(10, seed=4, noise_fraction=0.0).samples
    values = [0.01, 0.014, 0.02]
    sweep = sweep_threshold(model, dev, param="kn_pcp_max", values=values,
                            config=XTFConfig.paper(rules=("KN",)), batch_size=4)
    reference = full_logits(model, dev)
    assert sweep.param == "kn_pcp_max" and [r["value"] for r in sweep.rows] == values
    for value, row in zip(values, sweep.rows):
        dropped = [s.response_mask & (lp.exp() > value) for s, (lp, _) in zip(dev, reference)]
        kept = [s.response_mask & ~d for s, d in zip(dev, dropped)]
        n_dropped = sum(int(d.sum()) for d in dropped)
        n_scored = sum(int(s.response_mask.sum()) for s in dev)
        assert row["dev_dropped"] == n_dropped and row["dev_scored"] == n_scored
        assert row["dev_drop_rate"] == pytest.approx(n_dropped / n_scored)
        assert row["dev_drop_rate_by_rule"] == {"KN": pytest.approx(n_dropped / n_scored)}
        for name, masks in (("dropped", dropped), ("kept", kept)):
            nll = torch.cat([-lp[m] for (lp, _), m in zip(reference, masks)])
            hits = torch.cat([h[m] for (_, h), m in zip(reference, masks)])
            if nll.numel():
                assert row[f"base_nll_{name}"] == pytest.approx(float(nll.mean()), rel=1e-5)
                assert row[f"base_accuracy_{name}"] == pytest.approx(float(hits.double().mean()))
            else:
                assert math.isnan(row[f"base_nll_{name}"])
    rates = [r["dev_drop_rate"] for r in sweep.rows]
    assert rates[0] > rates[1] > 0  # a lower PCP threshold drops more: the sweep moves
    assert "kn_pcp_max" in sweep.table() and len(sweep.table().splitlines()) == 4


def test_sweep_fine_tunes_a_copy_per_value():
    model = tiny.model(seed=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    dev = tiny.data(6, seed=4, noise_fraction=0.0).samples
    pool = tiny.data(12).samples
    tuned = []

    def train(copy_of_model, filtered):
        assert copy_of_model is not model
        finetune(copy_of_model, filtered, lr=1e-2, batch_size=6)
        tuned.append((copy_of_model, filtered))

    sweep = sweep_threshold(model, dev, param="ri_drop_rate", values=[0.0, 0.5],
                            config=XTFConfig.paper(rules=("RI",), ri_threshold="rate"), train_samples=pool,
                            train=train, evaluate=lambda m: {"marker": len(tuned)})
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the base is never trained
    for (tuned_model, filtered), row, rate in zip(tuned, sweep.rows, (0.0, 0.5)):
        expected = sum(math.floor(rate * int(s.response_mask.sum())) for s in pool)
        assert sum(int(((f.labels == -100) & s.response_mask).sum()) for f, s in zip(filtered, pool)) == expected
        assert row["train_drop_rate"] == pytest.approx(expected / sum(int(s.response_mask.sum()) for s in pool))
        reference = full_logits(tuned_model, dev)
        nll = torch.cat([-lp[s.response_mask] for (lp, _), s in zip(reference, dev)])
        hits = torch.cat([h[s.response_mask] for (_, h), s in zip(reference, dev)])
        assert row["tuned_dev_nll"] == pytest.approx(float(nll.mean()), rel=1e-5)
        assert row["tuned_dev_accuracy"] == pytest.approx(float(hits.double().mean()))
    assert [r["marker"] for r in sweep.rows] == [1, 2]
    assert "tuned NLL" in sweep.table()


def test_token_cleaning_sweep_and_argument_checks():
    base = tiny.model(seed=1)
    ref = tiny.perturbed(base, seed=2)
    dev = tiny.data(6, seed=4, noise_fraction=0.0).samples
    sweep = sweep_threshold(base, dev, param="k", values=[0.5, 0.8], config=TokenCleaningConfig.paper(), ref=ref)
    scored = sum(int(s.response_mask.sum()) for s in dev)
    assert [r["dev_dropped"] for r in sweep.rows] == [scored - math.floor(scored * 5 / 10),
                                                      scored - math.floor(scored * 8 / 10)]
    with pytest.raises(ValueError, match="ref="):
        sweep_threshold(base, dev, param="k", values=[0.5], config=TokenCleaningConfig())
    with pytest.raises(ValueError, match="param must be a field"):
        sweep_threshold(base, dev, param="threshold", values=[0.5])
    with pytest.raises(ValueError, match="kn_pcp_max"):
        sweep_threshold(base, dev, param="kn_pcp_max", values=[0.9, 2.0])
    with pytest.raises(ValueError, match="go together"):
        sweep_threshold(base, dev, param="kn_pcp_max", values=[0.9], train=lambda m, s: None)


def test_token_correct_is_the_argmax_hit():
    model = tiny.model(seed=1)
    samples = tiny.data(4).samples
    batch = collate(samples)
    hits = token_correct(model, batch)
    for row, (sample, (_, expected)) in enumerate(zip(samples, full_logits(model, samples))):
        labelled = torch.zeros(len(sample), dtype=torch.bool)
        labelled[1:] = sample.labels[1:] != -100
        assert torch.equal(hits[row, : len(sample)], expected & labelled)
        assert not hits[row, len(sample):].any()


def test_a_swept_threshold_knob_puts_its_rule_in_its_mode():
    """The defaults rank KN by rate; sweeping kn_pcp_max must sweep the absolute threshold, not do nothing."""
    base = tiny.model("llama")
    samples = tiny.data(12).samples
    sweep = sweep_threshold(base, samples, param="kn_pcp_max", values=[0.0, 0.999999],
                            config=XTFConfig(rules=("KN",), kn_anchor_fraction=0.0,
                                             safeguards=Safeguards(protect_special_tokens=False, max_sample_drop=None,
                                                                   max_total_drop=None)))
    assert sweep.rows[0]["dev_drop_rate"] == 1.0 and sweep.rows[1]["dev_drop_rate"] == 0.0


@pytest.mark.parametrize("scope", ["global", "sample"])
def test_a_sweep_shows_drop_rates_over_the_global_cap_without_stopping(scope):
    """The global cap is a check, not a selection: values past it are swept and reported, not refused."""
    base = tiny.model("llama")
    samples = tiny.data(12).samples
    capped = XTFConfig(rules=("KN",), kn_anchor_fraction=0.0,
                       safeguards=Safeguards(protect_special_tokens=False, max_sample_drop=None, max_total_drop=0.1,
                                             on_exceed="error"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sweep = sweep_threshold(base, samples, param="kn_pcp_max", values=[0.0], config=capped)
        tc = TokenCleaningConfig(k=0.5, scope=scope, safeguards=dataclasses.replace(capped.safeguards))
        tc_sweep = sweep_threshold(base, samples, param="k", values=[0.5], config=tc,
                                   ref=tiny.perturbed(base, seed=1))
    assert sweep.rows[0]["dev_drop_rate"] == 1.0 and tc_sweep.rows[0]["dev_drop_rate"] > 0.4
