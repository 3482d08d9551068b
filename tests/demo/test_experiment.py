"""One cell of the comparison on a tiny base: every arm's drop is what it claims, the controls match their
arm's size, the package's fused ops did the training and scoring, and the paired statistics line up."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from xtf_kernels import select
from xtf_kernels.datasets.miniature import KIND_CODE
from xtf_kernels.datasets.miniature import BaseConfig
from xtf_kernels.datasets.miniature import load_base
from xtf_kernels.demo.aggregate import compare
from xtf_kernels.demo.experiment import ARMS
from xtf_kernels.demo.experiment import RATE_FIELDS
from xtf_kernels.demo.experiment import RI_SCORE_LADDER
from xtf_kernels.demo.experiment import RUNG_PRESET
from xtf_kernels.demo.experiment import SAFEGUARD_LADDER
from xtf_kernels.demo.experiment import TR_ANCHOR_LADDER
from xtf_kernels.demo.experiment import XTF_VARIANTS
from xtf_kernels.demo.experiment import CellArtifacts
from xtf_kernels.demo.experiment import CellConfig
from xtf_kernels.demo.experiment import random_selection
from xtf_kernels.demo.experiment import run_cell
from xtf_kernels.methods import Safeguards
from xtf_kernels.methods import TokenCleaningConfig
from xtf_kernels.methods import XTFConfig
from xtf_kernels.methods.token_cleaning import split_parts

TINY = BaseConfig(documents=300, tokenizer_documents=300, vocab_size=400, hidden_size=32, num_layers=2,
                  num_heads=2, num_kv_heads=1, intermediate_size=64)
CELL = CellConfig(pool=24, trusted=8, heldout=10, retention=3, self_evolving_parts=2, batch_size=8,
                  arms=ARMS,
                  random_for=("xtf_KN", "tc_fixed", "oracle"))


class XtfOps(TorchDispatchMode):
    """Counts dispatched ``torch.ops.xtf.*`` calls."""

    def __init__(self):
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "xtf":
            self.calls[func._opname] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    base = load_base(TINY, cache_dir=tmp_path_factory.mktemp("cache"))
    artifacts = CellArtifacts()
    with XtfOps() as ops:
        result = run_cell(base.model, base.tokenizer, noise=0.15, seed=0, config=CELL, artifacts=artifacts)
    return result, artifacts, ops.calls


def test_every_arm_and_control_is_there(cell):
    result, _artifacts, _calls = cell
    expected = {*CELL.arms, *(f"random:{a}" for a in CELL.random_for)}
    assert set(result["arms"]) == expected
    assert "selection" not in result["arms"]["all_tokens"]
    for arm, entry in result["arms"].items():
        evaluation = entry["evaluation"]
        assert len(evaluation["correct"]) == CELL.heldout and 0 <= evaluation["exact_match"] <= 1, arm
        assert evaluation["clean_nll"] > 0 and set(evaluation["retention"]) == {"one_step", "facts", "mean"}
    assert result["data"]["pool"] == CELL.pool and 0.15 <= sum(
        result["data"]["kind_fraction"][k] for k in ("wrong_number", "off_domain", "garbled")) < 0.2


def test_drops_are_what_each_arm_claims(cell):
    result, artifacts, _calls = cell
    response = torch.cat([s.response_mask for s in artifacts.samples])
    harmful = torch.cat([s.noise_mask for s in artifacts.samples]) & response
    oracle = torch.cat(artifacts.dropped["oracle"])
    assert torch.equal(oracle, harmful)
    assert result["arms"]["oracle"]["selection"]["harmful"]["precision"] == 1.0
    assert result["arms"]["oracle"]["selection"]["harmful"]["auroc"] == 1.0
    for arm, drops in artifacts.dropped.items():
        dropped = torch.cat(drops)
        assert not (dropped & ~response).any(), arm  # only response tokens are ever dropped
        selection = result["arms"][arm].get("selection")
        if selection is not None:
            assert selection["dropped"] == int(dropped.sum()), arm
    for arm in CELL.random_for:  # a control drops exactly as many tokens as its arm
        assert int(torch.cat(artifacts.dropped[f"random:{arm}"]).sum()) == int(torch.cat(artifacts.dropped[arm]).sum())
    # Token Cleaning keeps floor(0.6 N) of the response tokens
    kept = int(response.sum()) - int(torch.cat(artifacts.dropped["tc_fixed"]).sum())
    assert kept == int(0.6 * int(response.sum()))
    # XTF's union is the union of its rules' drops (paper preset: no safeguard keeps a token back)
    union = torch.cat(artifacts.dropped["xtf_paper"])
    rules = torch.cat(artifacts.dropped["xtf_RI"]) | torch.cat(artifacts.dropped["xtf_KN"]) | torch.cat(
        artifacts.dropped["xtf_TR"])
    assert torch.equal(union, rules)


MODES = {"ri_threshold", "kn_threshold", "tr_threshold"}


@pytest.mark.parametrize("arm", (*SAFEGUARD_LADDER, *TR_ANCHOR_LADDER, *RI_SCORE_LADDER))
def test_each_rung_of_the_ladder_changes_one_thing(arm):
    """A rung is its preset with exactly the fields its name says changed: "paper + X" the paper preset with X;
    "guarded" the paper preset with every safeguard; "guarded + / without X" guarded with X changed."""
    guarded = XTF_VARIANTS["xtf_guarded"][1]()
    preset = {"xtf_guarded": guarded, "xtf_guarded+rates": XTF_VARIANTS["xtf_guarded+rates"][1](),
              "xtf_paper": XTFConfig.paper(), "xtf_safe": XTFConfig()}[RUNG_PRESET[arm]]
    config = XTF_VARIANTS[arm][1]()
    changed = {f.name for f in dataclasses.fields(XTFConfig) if getattr(config, f.name) != getattr(preset, f.name)}
    expected = {"xtf_paper+special": {"safeguards"}, "xtf_paper+cap": {"safeguards"},
                "xtf_paper+anchors": {"kn_anchor_fraction"}, "xtf_paper+offdiag": {"ri_score"},
                "xtf_paper+occurrences": {"otsu_weights"}, "xtf_paper+response_domain": {"tr_domain"},
                "xtf_paper+rates": MODES, "xtf_guarded": {"safeguards", "kn_anchor_fraction", "ri_score"},
                "xtf_guarded+rates": MODES, "xtf_guarded-KN": {"rules"},
                "xtf_guarded+rates+tr_anchors": {"tr_anchor_fraction"},
                "xtf_guarded+rates+tr_anchors_half": {"tr_anchor_fraction"}, "xtf_guarded+rates-TR": {"rules"},
                **{rung: {"ri_score"} for rung in RI_SCORE_LADDER}}
    assert changed == expected[arm]
    if "rates" in arm:  # every rule in its rate mode at 5% (the class default rates, which the presets share)
        assert all(getattr(config, f) == ("rate" if f.endswith("threshold") else 0.05) for f in RATE_FIELDS)
    if arm == "xtf_paper+special":
        assert dataclasses.replace(config.safeguards, protect_special_tokens=False) == Safeguards.off()
    if arm == "xtf_paper+cap":
        assert dataclasses.replace(config.safeguards, max_sample_drop=None) == Safeguards.off()
        assert config.safeguards.max_sample_drop == 0.4
    if arm == "xtf_guarded":  # every safeguard of the paper-preset rungs, together
        rungs = [XTF_VARIANTS[a][1]() for a in ("xtf_paper+special", "xtf_paper+cap", "xtf_paper+anchors",
                                                 "xtf_paper+offdiag")]
        assert config.safeguards.protect_special_tokens and config.safeguards.max_sample_drop == 0.4
        assert (config.kn_anchor_fraction, config.ri_score) == (rungs[2].kn_anchor_fraction, rungs[3].ri_score)


def test_token_cleanings_rung_adds_the_library_safeguards(cell):
    """tc_fixed_guarded is TokenCleaningConfig(k): the published form with the special tokens protected (its
    top k fixes the drop rate, so no cap); in a trained cell it drops no eos and as many tokens as published."""
    result, artifacts, _calls = cell
    guarded, paper = result["arms"]["tc_fixed_guarded"]["config"], result["arms"]["tc_fixed"]["config"]
    assert guarded["safeguards"] == TokenCleaningConfig().safeguards.to_dict()
    assert paper["safeguards"] == Safeguards.off().to_dict() and guarded["protected_ids_resolved"]
    same = ("safeguards", "protected_ids_resolved")
    assert {k: v for k, v in guarded.items() if k not in same} == {k: v for k, v in paper.items() if k not in same}
    eos = torch.cat([k == KIND_CODE["eos"] for k in artifacts.kinds])
    assert bool((torch.cat(artifacts.dropped["tc_fixed"]) & eos).any())  # the published form drops some eos
    assert not (torch.cat(artifacts.dropped["tc_fixed_guarded"]) & eos).any()


def _round_rows(harmful, dropped, parts) -> list[tuple[int, float | None]]:
    """(dropped, precision) of each part's drop, from the masks."""
    rows, start = [], 0
    for part in parts:
        d, h = torch.cat(dropped[start:start + len(part)]), torch.cat(harmful[start:start + len(part)])
        start += len(part)
        rows.append((int(d.sum()), int((d & h).sum()) / int(d.sum()) if int(d.sum()) else None))
    return rows


def test_self_evolving_cleaning_with_a_trusted_first_part_and_its_control(cell):
    """As published, part 0 of the pool is trained on as is and parts 1..n-1 cleaned; with the trusted set as
    round 0 every part is cleaned; its control (k = 1) runs that schedule and drops nothing. Each round records
    the reference check (against the base, on clean samples) and the precision of its own drop."""
    result, artifacts, _calls = cell
    harmful = [s.noise_mask & s.response_mask for s in artifacts.samples]
    parts = split_parts(artifacts.samples, CELL.self_evolving_parts)
    published, trusted = result["arms"]["tc_self_evolving"], result["arms"]["tc_self_evolving_trusted"]
    assert not torch.cat(artifacts.dropped["tc_self_evolving"][:len(parts[0])]).any()
    assert torch.cat(artifacts.dropped["tc_self_evolving_trusted"][:len(parts[0])]).any()
    assert not torch.cat(artifacts.dropped["tc_trusted_then_all_tokens"]).any()
    assert (published["config"]["first_part"], trusted["config"]["first_part"]) == ("pool part 0", "trusted set")
    assert result["arms"]["tc_trusted_then_all_tokens"]["config"]["k"] == 1.0
    for arm, arm_parts in (("tc_self_evolving", parts[1:]), ("tc_self_evolving_trusted", parts)):
        rounds = result["arms"][arm]["rounds"]
        assert [r["round"] for r in rounds] == list(range(1, len(arm_parts) + 1))
        offset = 0 if arm == "tc_self_evolving_trusted" else len(parts[0])
        expected = _round_rows(harmful[offset:], artifacts.dropped[arm][offset:], arm_parts)
        assert [r["dropped"] for r in rounds] == [count for count, _ in expected]
        assert [r["precision"] for r in rounds] == pytest.approx([precision for _, precision in expected])
        for row in rounds:
            assert row["reference_nll"] > 0 and row["base_nll"] > 0
    base_nlls = {r["base_nll"] for arm in ("tc_self_evolving", "tc_self_evolving_trusted")
                 for r in result["arms"][arm]["rounds"]}
    assert len(base_nlls) == 1  # one check set for both arms


def test_the_library_defaults_are_what_the_ladder_chose():
    """L2 chose guarded + rates, L3 added TR anchors 0.25 (benchmarks/methods/results/tr_anchors/)."""
    assert XTF_VARIANTS["xtf_guarded+rates+tr_anchors"][1]() == XTFConfig()


def test_the_ladder_trains_on_what_its_rungs_keep(cell):
    result, artifacts, _calls = cell
    assert set(SAFEGUARD_LADDER) <= set(result["arms"])
    response = [s.response_mask for s in artifacts.samples]
    paper = artifacts.dropped["xtf_paper"]
    special = torch.cat([k == KIND_CODE["eos"] for k in artifacts.kinds])
    assert not (torch.cat(artifacts.dropped["xtf_paper+special"]) & special).any()
    # the cap: a sample within it keeps the paper preset's drop, one over it is cut to the cap from that drop
    for capped, dropped, valid in zip(artifacts.dropped["xtf_paper+cap"], paper, response):
        allowed = select.keep_count(0.4, int(valid.sum()))
        if int(dropped.sum()) <= allowed:
            assert torch.equal(capped, dropped)
        else:
            assert int(capped.sum()) == allowed and not (capped & ~dropped).any()
    # anchors keep back some of KN's drops only: every other drop of the paper preset stays
    anchored, union, kn = (torch.cat(artifacts.dropped[a]) for a in ("xtf_paper+anchors", "xtf_paper", "xtf_KN"))
    assert not (anchored & ~union).any() and not (union & ~kn & ~anchored).any()
    for arm in SAFEGUARD_LADDER:  # every rung was trained and evaluated
        assert result["arms"][arm]["evaluation"]["clean_nll"] > 0, arm


def test_the_fused_ops_did_the_work(cell):
    _result, _artifacts, calls = cell
    names = set(calls)
    assert any("linear_cross_entropy" in n for n in names), names  # every training step
    assert any("token_logprobs" in n or "influence" in n for n in names), names  # scoring
    assert sum(calls.values()) > 50


def test_random_selection_is_exact_and_seeded(cell):
    _result, artifacts, _calls = cell
    first = random_selection(artifacts.samples, 0.25, seed=3)
    total = sum(int(s.response_mask.sum()) for s in artifacts.samples)
    assert int(torch.cat(first.dropped).sum()) == round(0.25 * total)
    assert all(torch.equal(a, b) for a, b in zip(first.dropped, random_selection(artifacts.samples, 0.25, 3).dropped))


def test_comparison_of_one_cell(cell):
    result, _artifacts, _calls = cell
    summary = compare([result])
    assert set(summary) == set(result["arms"])
    oracle = summary["oracle"]
    diffs = [a - b for a, b in zip(result["arms"]["oracle"]["evaluation"]["correct"],
                                   result["arms"]["all_tokens"]["evaluation"]["correct"])]
    assert oracle["vs_all_tokens"]["problems"]["mean"] == pytest.approx(sum(diffs) / len(diffs))
    assert oracle["vs_random"]["against"] == "random:oracle"
    assert "vs_random" not in summary["xtf_RI"] and "vs_all_tokens" not in summary["all_tokens"]
