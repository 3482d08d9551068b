"""The explainability report: statistics and precision / recall recomputed here from the per-token flags."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.methods import tiny
from xtf_kernels.methods import Safeguards
from xtf_kernels.methods import XTFConfig
from xtf_kernels.methods import XTFScorer
from xtf_kernels.pipeline import precision_recall
from xtf_kernels.pipeline import rule_statistics
from xtf_kernels.pipeline import score_dataset
from xtf_kernels.pipeline import write_report

# the paper's threshold modes (their knobs below), the other safeguards the defaults' (TR anchors off: every
# occurrence of a type TR drops stays dropped, which the overlap counts below read)
THRESHOLDS = dict(ri_threshold="fence", kn_threshold="absolute", tr_threshold="otsu", tr_anchor_fraction=0.0)

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scores")
    dataset = tiny.data(12)
    # knobs that make each rule fire on a random model (PCP ~ 1 / V = 0.014)
    scorer = XTFScorer(tiny.model("qwen2"), XTFConfig(**THRESHOLDS, ri_fence_c=0.0, kn_pcp_max=0.014, otsu_bins=64))
    return score_dataset(scorer, dataset.samples, folder, shard_size=5, progress=False), dataset


def test_rule_statistics(scored):
    result, dataset = scored
    stats = rule_statistics(result)
    flags = torch.cat([r.dropped_by for r in result.iter_samples()]).long()
    scored_tokens = sum(int(s.response_mask.sum()) for s in dataset.samples)
    assert stats["scored_tokens"] == scored_tokens
    assert stats["dropped_tokens"] == int((flags != 0).sum())
    for i, rule in enumerate(("RI", "KN", "TR")):
        fired = (flags >> i) & 1 == 1
        assert stats["rules"][rule]["fired"] == int(fired.sum()) > 0
        assert stats["rules"][rule]["only_this_rule"] == int((flags == 1 << i).sum())
    ri, kn = (flags & 1) != 0, (flags & 2) != 0
    both = int((ri & kn).sum())
    assert stats["overlap"]["RI&KN"]["both"] == both
    assert stats["overlap"]["RI&KN"]["jaccard"] == pytest.approx(both / int((ri | kn).sum()))
    assert stats["all_rules"] == int((flags == 7).sum())


def test_precision_recall_against_the_known_noise(scored):
    result, dataset = scored
    report = precision_recall(result, dataset.samples)
    truth = torch.cat([s.noise_mask & s.response_mask for s in dataset.samples])
    union = torch.cat([r.dropped for r in result.iter_samples()])
    tp = int((truth & union).sum())
    assert report["union"]["precision"] == pytest.approx(tp / int(union.sum()))
    assert report["union"]["recall"] == pytest.approx(tp / int(truth.sum()))
    without_truth = [type(s)(s.input_ids, s.labels) for s in dataset.samples]
    assert precision_recall(result, without_truth) is None


def test_write_report_files(scored, tmp_path):
    result, dataset = scored
    out = write_report(result, tmp_path, data=dataset.samples, tokenizer=dataset.tokenizer, max_samples=3)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["statistics"] == out["statistics"]
    assert saved["thresholds"]["kn"] == [pytest.approx(1 - 0.014)]
    assert len(saved["thresholds"]["tr"]) == 2
    assert (tmp_path / "histograms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report.html").read_text()
    assert page.count('class="sample"') == 3
    assert "dropped by RI" in page and "dropped by KN" in page and "dropped by TR" in page
    assert "Anna" in page or "Tom" in page or "Ben" in page  # token texts, not ids
    stats_only = write_report(result, tmp_path / "plain")
    assert stats_only["precision_recall"] is None


def test_report_diagnostics_by_type_and_position(scored, tmp_path):
    result, dataset = scored
    out = write_report(result, tmp_path, data=dataset.samples, tokenizer=dataset.tokenizer, max_samples=1)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["diagnostics"] == json.loads(json.dumps(out["diagnostics"]))
    diagnostics = out["diagnostics"]
    # recomputed here: per rule, the drop rate in each fifth of the response and the types always dropped
    scored_in_bin = [0] * 5
    dropped_in_bin = {rule: [0] * 5 for rule in ("RI", "KN", "TR")}
    occurrences, dropped_ids = {}, {rule: {} for rule in ("RI", "KN", "TR")}
    for sample, res in zip(dataset.samples, result.iter_samples()):
        positions = [t for t in range(len(sample)) if not math.isnan(float(res.scores["guard"][t]))]
        for rank, t in enumerate(positions):
            fifth = min(int(rank / len(positions) * 5), 4)
            scored_in_bin[fifth] += 1
            token = int(sample.input_ids[t])
            occurrences[token] = occurrences.get(token, 0) + 1
            for bit, rule in enumerate(("RI", "KN", "TR")):
                if int(res.dropped_by[t]) >> bit & 1:
                    dropped_in_bin[rule][fifth] += 1
                    dropped_ids[rule][token] = dropped_ids[rule].get(token, 0) + 1
    assert diagnostics["positions"]["scored"] == scored_in_bin
    for rule in ("RI", "KN", "TR"):
        assert diagnostics["positions"]["drop_rate"][rule] == pytest.approx(
            [d / s for d, s in zip(dropped_in_bin[rule], scored_in_bin)])
        always = sorted(t for t, n in dropped_ids[rule].items() if n == occurrences[t])
        assert [t["id"] for t in diagnostics["rules"][rule]["always_dropped_types"]] == always
    assert diagnostics["guard"]["protected"] > 0  # the tokenizer-less scorer still protects the model's eos
    page = (tmp_path / "report.html").read_text()
    assert "Diagnostics by token type and position" in page and "Drop rate by relative position" in page
    assert "histograms" in page and "guard" not in out["statistics"]["rules"]


def test_report_states_the_global_drop_cap(scored, tmp_path):
    result, dataset = scored
    out = write_report(result, tmp_path / "held")
    saved = json.loads((tmp_path / "held" / "report.json").read_text())
    stats = out["statistics"]
    assert saved["drop_cap"] == {"max_total_drop": 0.4, "on_exceed": "warn", "dropped": stats["dropped_tokens"],
                                 "scored": stats["scored_tokens"], "fraction": stats["dropped_fraction"],
                                 "exceeded": stats["dropped_fraction"] > 0.4}
    assert "Global cap (max_total_drop) 40.00%" in (tmp_path / "held" / "report.html").read_text()
    capped = XTFScorer(tiny.model("qwen2"), XTFConfig(**THRESHOLDS, ri_fence_c=0.0, kn_pcp_max=0.014, otsu_bins=64,
                                                      safeguards=Safeguards(max_total_drop=0.01)))
    with pytest.warns(UserWarning, match="over the whole dataset"):
        capped_result = score_dataset(capped, dataset.samples, tmp_path / "capped", shard_size=5, progress=False)
    write_report(capped_result)
    assert json.loads((tmp_path / "capped" / "report.json").read_text())["drop_cap"]["exceeded"] is True
    assert "EXCEEDED" in (tmp_path / "capped" / "report.html").read_text()
