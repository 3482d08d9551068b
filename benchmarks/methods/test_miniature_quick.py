"""The miniature benchmark's quick mode end to end, as CI runs it: a fresh cache (the small base is built),
two seeds at 0% and 15% noise, every output file written and consistent with the cells."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("scipy")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def quick(tmp_path_factory, quick_cache):
    out, cache = tmp_path_factory.mktemp("quick"), quick_cache
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "benchmarks.methods.miniature", "--quick", "--out", str(out),
                           "--cache-dir", str(cache)], capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


@pytest.mark.slow
def test_quick_mode_writes_every_file(quick):
    out, done = quick
    assert sorted(os.listdir(out)) == ["miniature.csv", "miniature.json", "miniature.md", "miniature.png"]
    assert (out / "miniature.png").read_bytes()[:4] == b"\x89PNG"
    assert "# Token filters on the miniature" in done.stdout


@pytest.mark.slow
def test_results_follow_from_the_cells(quick):
    out, _done = quick
    from benchmarks.methods.miniature import quick_plan
    from benchmarks.methods.miniature_criteria import judge

    results = json.loads((out / "miniature.json").read_text())
    plan = quick_plan()
    assert set(results["cells"]) == {"0.00", "0.15"} and results["plan"]["seeds"] == [0, 1]
    for level, cells in results["cells"].items():
        config = plan.cells[float(level)]
        assert [c["seed"] for c in cells] == [0, 1]
        for cell in cells:
            assert set(cell["arms"]) == {*config.arms, *(f"random:{a}" for a in config.random_for)}
    noisy = results["summary"]["0.15"]
    per_seed = [c["arms"]["oracle"]["evaluation"]["exact_match"] - c["arms"]["all_tokens"]["evaluation"]["exact_match"]
                for c in results["cells"]["0.15"]]
    assert noisy["oracle"]["vs_all_tokens"]["per_seed"] == per_seed
    assert noisy["oracle"]["selection"]["harmful"]["precision"] == 1.0
    assert results["criteria"] == judge(results["summary"])
    nll = [c["arms"]["oracle"]["evaluation"]["clean_nll"] - c["arms"]["all_tokens"]["evaluation"]["clean_nll"]
           for c in results["cells"]["0.15"]]
    assert noisy["oracle"]["vs_all_tokens"]["clean_nll"]["mean"] == pytest.approx(sum(nll) / 2, abs=1e-12)
    # per problem: summed NLL over the mean response length, so the mean is the token-weighted difference
    problems = noisy["oracle"]["vs_all_tokens"]["clean_nll_problems"]
    assert problems["n"] == 2 * 60  # two seeds of 60 held-out problems
    assert problems["mean"] == pytest.approx(sum(nll) / 2, rel=1e-9)
    assert problems["low"] < problems["mean"] < problems["high"]
    assert "NLL of the clean held-out responses" in (out / "miniature.md").read_text()
    rows = list(csv.DictReader((out / "miniature.csv").open()))
    assert len(rows) == sum(len(c["arms"]) for cells in results["cells"].values() for c in cells)
    assert results["environment"]["load_average_end"] and results["plan"]["base_info"]["cached"] is False


@pytest.mark.slow
def test_refresh_rewrites_the_files_from_the_cells(quick, tmp_path):
    """--refresh recomputes every file from the stored cells (same cells, same files), keeps the run's own
    environment record, and refuses results of another plan."""
    import shutil

    from benchmarks.methods import miniature

    out, _done = quick
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    stored = json.loads((copy / "miniature.json").read_text())
    stored["environment"]["machine"] = "the machine that ran the cells"  # kept, not re-read from this one
    (copy / "miniature.json").write_text(json.dumps(stored))
    (copy / "miniature.md").write_text("stale")
    assert miniature.main(["--quick", "--refresh", "--out", str(copy)]) == 0
    text = (copy / "miniature.md").read_text()
    assert "Machine: the machine that ran the cells;" in text and "Tables recomputed from the stored cells" in text
    assert text.split("Tables recomputed")[1].split("\n", 1)[1] == (out / "miniature.md").read_text().split(
        "\n", 3)[3]  # after the header, the same tables
    refreshed = json.loads((copy / "miniature.json").read_text())
    assert refreshed["summary"] == stored["summary"] and refreshed["cells"] == stored["cells"]
    assert refreshed["environment"] == stored["environment"] and refreshed["plan"] == stored["plan"]
    assert set(refreshed["refreshed"]) == {"at", "xtf_kernels"}
    with pytest.raises(ValueError, match="another plan.*seeds"):
        miniature.main(["--quick", "--refresh", "--seeds", "0", "--out", str(copy)])
    with pytest.raises(ValueError, match="another plan.*base"):
        miniature.main(["--quick", "--refresh", "--base-seed", "7", "--out", str(copy)])
    stored["plan"]["cells"]["0.15"]["lr"] = 1e-3  # a cell setting the run recorded differs
    (copy / "miniature.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=r"another plan \(cells differ\)"):
        miniature.main(["--quick", "--refresh", "--out", str(copy)])
    with pytest.raises(SystemExit):  # nothing to train and nothing to refresh at once
        miniature.main(["--quick", "--refresh", "--partial", str(copy / "cells.json")])


def test_criteria_on_hand_made_summaries():
    from benchmarks.methods.miniature_criteria import judge

    def arm(mean_all, low_all, low_random, auroc, em_per_seed):
        entry = {"exact_match": sum(em_per_seed) / len(em_per_seed), "exact_match_per_seed": em_per_seed,
                 "selection": {"harmful": {"auroc": auroc}},
                 "vs_all_tokens": {"seeds": {"mean": mean_all, "low": low_all, "high": mean_all + 0.1}}}
        if low_random is not None:
            entry["vs_random"] = {"seeds": {"mean": 0.0, "low": low_random, "high": 0.1}}
        return entry

    noisy = {"oracle": arm(0.2, 0.1, None, 1.0, [0.5, 0.6]), "tc_fixed": arm(0.1, 0.02, 0.01, 0.7, [0.4, 0.5]),
             "xtf_KN": arm(-0.1, -0.2, -0.1, 0.3, [0.3, 0.3]), "xtf_paper": arm(0.0, -0.1, -0.05, 0.55, [0.2, 0.2])}
    clean = {"tc_fixed": {"vs_all_tokens": {"seeds": {"mean": -0.01}}},
             "xtf_paper": {"vs_all_tokens": {"seeds": {"mean": -0.05}}},
             "xtf_KN": {"vs_all_tokens": {"seeds": {"mean": 0.0}}}}
    verdict = judge({"0.15": noisy, "0.00": clean})
    assert verdict["sensitive"] is True
    assert verdict["methods"]["tc_fixed"]["works"] is True
    kn, union = verdict["methods"]["xtf_KN"], verdict["methods"]["xtf_paper"]
    assert (kn["C1"], kn["C2"], kn["C3"], kn["works"]) == (False, True, False, False)
    assert (union["C2"], union["C4"], union["works"]) == (False, False, False)  # 0.2 vs KN's 0.3 per seed
    insensitive = judge({"0.15": {**noisy, "oracle": arm(0.0, -0.1, None, 1.0, [0.4, 0.4])}, "0.00": clean})
    assert insensitive["sensitive"] is False and insensitive["methods"]["tc_fixed"]["works"] is None
    assert judge({"0.15": noisy})["methods"]["tc_fixed"]["works"] is None  # 0% not run: no verdict


def test_ladder_rules_on_hand_made_summaries():
    from benchmarks.methods.miniature_criteria import judge_ladder

    def rung(mean, high, protected, em=0.5, vs_all=0.0):
        return {"exact_match": em, "selection": {"protected_drop_rate": {"answer": protected, "eos": 0.0,
                                                                          "template": 0.0}},
                "vs_preset": {"seeds": {"mean": mean, "low": mean - 0.1, "high": high}},
                "vs_all_tokens": {"seeds": {"mean": vs_all}}}

    noisy = {"xtf_paper": rung(0, 0, 0.5), "xtf_paper+cap": rung(0.05, 0.1, 0.2),  # helps and protects
             "xtf_paper+special": rung(-0.01, 0.02, 0.3),  # no measurable cost, protects
             "xtf_paper+rates": rung(0.1, 0.2, 0.1),  # helps at 15% but costs at 0% (below)
             "xtf_guarded": rung(0, 0, 0.1, em=0.6), "xtf_guarded+rates": rung(0, 0, 0.1, em=0.7),
             "xtf_guarded-KN": rung(0, 0, 0.1, em=0.8)}
    clean = {"xtf_paper": rung(0, 0, 0.5, vs_all=-0.1), "xtf_paper+cap": rung(0.0, 0.05, 0.2),
             "xtf_paper+special": rung(0.0, 0.01, 0.3), "xtf_paper+rates": rung(-0.1, -0.02, 0.1),
             "xtf_guarded": rung(0, 0, 0.1, vs_all=-0.01), "xtf_guarded+rates": rung(0, 0, 0.1, vs_all=-0.019),
             "xtf_guarded-KN": rung(0, 0, 0.1, vs_all=-0.05)}
    ladder = judge_ladder({"0.15": noisy, "0.00": clean})
    worth = {arm: v["worth_having"] for arm, v in ladder["safeguards"].items()}
    assert worth == {"xtf_paper+cap": True, "xtf_paper+special": True, "xtf_paper+rates": False}
    # the best at 15% (without KN) loses 5 points at 0%: the best of those within 2 points is chosen
    assert ladder["default"] == "xtf_guarded+rates" and ladder["recommended"] is True
    for entry in clean.values():
        entry["vs_all_tokens"]["seeds"]["mean"] = -0.3
    clean["xtf_guarded-KN"]["vs_all_tokens"]["seeds"]["mean"] = -0.25
    ladder = judge_ladder({"0.15": noisy, "0.00": clean})
    assert ladder["default"] == "xtf_guarded-KN" and ladder["recommended"] is False


def _run_on_a_tiny_base(plan, tmp_path, **sizes):
    """``plan``'s cells at seeds 0-1 on a tiny base with tiny pools (``sizes`` on top), through record() and
    finish() into tmp_path/out; its results."""
    import dataclasses

    from benchmarks.methods.miniature import finish
    from benchmarks.methods.miniature import record
    from xtf_kernels.datasets.miniature import BaseConfig
    from xtf_kernels.datasets.miniature import load_base
    from xtf_kernels.demo.experiment import run_cell

    tiny = BaseConfig(documents=300, tokenizer_documents=300, vocab_size=400, hidden_size=32, num_layers=2,
                      num_heads=2, num_kv_heads=1, intermediate_size=64)
    base = load_base(tiny, cache_dir=tmp_path / "cache")
    plan = dataclasses.replace(plan, seeds=(0, 1), base=tiny, cells={
        level: dataclasses.replace(config, pool=24, trusted=8, heldout=10, retention=3, batch_size=8, **sizes)
        for level, config in plan.cells.items()})
    cells = {f"{level:.2f}": [run_cell(base.model, base.tokenizer, noise=level, seed=seed, config=config)
                              for seed in plan.seeds] for level, config in plan.cells.items()}
    environment, planned = record(plan, cells, seconds=1.0, load_start=[0.0, 0.0, 0.0], load_end=[0.0, 0.0, 0.0],
                                  base_info=base.info)
    return finish(plan, cells, str(tmp_path / "out"), environment=environment, plan_record=planned)


@pytest.mark.slow
def test_safeguards_plan_end_to_end_on_a_tiny_base(tmp_path):
    """The ladder plan's cells through finish(): each rung compared with its preset, L1 / L2 applied, files."""
    from benchmarks.methods.miniature import safeguards_plan
    from xtf_kernels.demo.experiment import SAFEGUARD_LADDER

    results = _run_on_a_tiny_base(safeguards_plan(), tmp_path)
    assert results["criteria"] is None
    for level in ("0.15", "0.00"):
        summary = results["summary"][level]
        for arm in SAFEGUARD_LADDER:
            preset = "xtf_guarded" if arm in ("xtf_guarded+rates", "xtf_guarded-KN") else "xtf_paper"
            expected = [c["arms"][arm]["evaluation"]["exact_match"] - c["arms"][preset]["evaluation"]["exact_match"]
                        for c in results["cells"][level]]
            assert summary[arm]["vs_preset"]["per_seed"] == expected and summary[arm]["vs_preset"]["against"] == preset
    assert set(results["ladder"]["safeguards"]) == {a for a in SAFEGUARD_LADDER if a.startswith("xtf_paper+")}
    assert results["ladder"]["default"] in ("xtf_guarded", "xtf_guarded+rates", "xtf_guarded-KN")
    text = (tmp_path / "out" / "miniature.md").read_text()
    assert "the safeguards one by one" in text and "L2 (the default configuration)" in text


def test_second_round_rule_on_hand_made_summaries():
    from benchmarks.methods.miniature_criteria import judge_tr_anchors

    def arm(em, vs_all):
        return {"exact_match": em, "vs_all_tokens": {"seeds": {"mean": vs_all}}}

    noisy = {"xtf_guarded+rates": arm(0.65, 0.05), "xtf_guarded+rates+tr_anchors": arm(0.62, 0.02),
             "xtf_guarded+rates+tr_anchors_half": arm(0.60, 0.0), "xtf_guarded+rates-TR": arm(0.58, -0.02)}
    low = {"xtf_guarded+rates": arm(0.0, -0.89), "xtf_guarded+rates+tr_anchors": arm(0.85, -0.04),
           "xtf_guarded+rates+tr_anchors_half": arm(0.88, -0.01), "xtf_guarded+rates-TR": arm(0.89, 0.0)}
    clean = {a: arm(0.99, 0.0) for a in noisy}
    verdict = judge_tr_anchors({"0.15": noisy, "0.05": low, "0.00": clean})
    # the best at 15% fails at 5%; anchors 0.25 lose 4 points at 5%: anchors 0.5 are the best within 2 points
    assert verdict["default"] == "xtf_guarded+rates+tr_anchors_half" and verdict["recommended"] is True
    for a in low:
        low[a]["vs_all_tokens"]["seeds"]["mean"] = -0.5
    low["xtf_guarded+rates-TR"]["vs_all_tokens"]["seeds"]["mean"] = -0.1
    verdict = judge_tr_anchors({"0.15": noisy, "0.05": low, "0.00": clean})
    assert verdict["default"] == "xtf_guarded+rates-TR" and verdict["recommended"] is False
    assert judge_tr_anchors({"0.15": noisy, "0.00": clean}) == {}  # 5% not run: no verdict


def _rung(em: float, vs_preset: tuple[float, float, float], vs_all: float = 0.0) -> dict:
    mean, low, high = vs_preset
    return {"exact_match": em, "vs_preset": {"seeds": {"mean": mean, "low": low, "high": high}},
            "vs_all_tokens": {"seeds": {"mean": vs_all}}}


def test_third_round_rules_on_hand_made_summaries():
    from benchmarks.methods.miniature_criteria import judge_remaining

    def level(relative, trusted, rounds=()):
        return {"xtf_safe+ri_mean": _rung(0.60, (-0.01, -0.03, 0.01)), "xtf_safe+ri_relative": _rung(*relative),
                "xtf_safe+ri_sum": _rung(0.61, (0.01, -0.01, 0.03)),
                "tc_self_evolving": {"rounds": list(rounds)}, "tc_self_evolving_trusted": _rung(*trusted)}

    rounds = [{"precision": 0.2, "beats_base": True}, {"precision": 0.05, "beats_base": False},
              {"precision": None, "beats_base": False}]  # a round that dropped nothing has no precision
    noisy = level((0.66, (0.03, 0.01, 0.05)), (0.70, (0.05, 0.01, 0.09)), rounds)
    low = level((0.90, (0.0, -0.01, 0.01), -0.01), (0.90, (-0.01, -0.03, 0.01)), rounds)
    clean = level((0.98, (0.0, -0.01, 0.01), -0.015), (0.97, (-0.019, -0.03, 0.0)))
    verdict = judge_remaining({"0.15": noisy, "0.05": low, "0.00": clean})
    # relative: interval above 0 at 15%, level at 5%, within 2 points of all tokens at 5% and 0%
    assert verdict["ri_score"]["verdict"] == "xtf_safe+ri_relative"
    assert verdict["trusted_part"]["verdict"] is True
    check = verdict["reference_check"]
    assert check["verdict"] is True and "2 of 4 rounds flagged" in check["why"]

    clean["xtf_safe+ri_relative"]["vs_all_tokens"]["seeds"]["mean"] = -0.03  # costs 3 points without noise
    clean["tc_self_evolving_trusted"]["vs_preset"]["seeds"]["mean"] = -0.021
    noisy["tc_self_evolving"]["rounds"] = [{"precision": 0.05, "beats_base": True},
                                          {"precision": 0.2, "beats_base": False}]
    low["tc_self_evolving"]["rounds"] = []
    verdict = judge_remaining({"0.15": noisy, "0.05": low, "0.00": clean})
    assert verdict["ri_score"]["verdict"] == "xtf_safe"  # no rung passes: the defaults keep offdiag
    assert verdict["trusted_part"]["verdict"] is False
    assert verdict["reference_check"]["verdict"] is False  # the flagged round was the more precise
    noisy["tc_self_evolving"]["rounds"] = [{"precision": 0.05, "beats_base": True}]
    assert judge_remaining({"0.15": noisy, "0.05": low, "0.00": clean})["reference_check"]["verdict"] is False
    assert set(judge_remaining({"0.15": noisy, "0.00": clean})) == {"reference_check"}  # 5% not run


@pytest.mark.slow
def test_third_round_plan_end_to_end_on_a_tiny_base(tmp_path):
    """The third round's cells through finish(): each rung against its preset, the rounds pooled over seeds
    with their seed, L4-L6 applied, the round tables written."""
    from benchmarks.methods.miniature import remaining_safeguards_plan
    from benchmarks.methods.miniature_criteria import judge_remaining
    from xtf_kernels.demo.experiment import RUNG_PRESET

    results = _run_on_a_tiny_base(remaining_safeguards_plan(), tmp_path, self_evolving_parts=2, check_samples=6)
    for level in ("0.15", "0.05", "0.00"):
        summary = results["summary"][level]
        for arm in ("xtf_safe+ri_mean", "xtf_safe+ri_relative", "xtf_safe+ri_sum", "tc_self_evolving_trusted"):
            assert summary[arm]["vs_preset"]["against"] == RUNG_PRESET[arm]
        rounds = summary["tc_self_evolving_trusted"]["rounds"]
        assert [(r["seed"], r["round"]) for r in rounds] == [(0, 1), (0, 2), (1, 1), (1, 2)]
        assert [(r["seed"], r["round"]) for r in summary["tc_self_evolving"]["rounds"]] == [(0, 1), (1, 1)]
    assert results["criteria"] is None and results["ladder"] == judge_remaining(results["summary"])
    assert set(results["ladder"]) == {"ri_score", "trusted_part", "reference_check"}
    text = (tmp_path / "out" / "miniature.md").read_text()
    assert "L6 (the per-round reference check informative)" in text
    assert "Token Cleaning (self-evolving, trusted first part), round by round" in text


def test_replication_rule_on_hand_made_summaries():
    from benchmarks.methods.miniature_criteria import judge_replication

    def versus(mean, low=-1.0, high=1.0):
        return {"seeds": {"mean": mean, "low": low, "high": high},
                "clean_nll": {"mean": 0.0, "low": -1.0, "high": 1.0}}

    def arm(vs_all, vs_random=None, auroc=0.6, em=0.6):
        entry = {"exact_match": em, "vs_all_tokens": versus(vs_all), "selection": {"harmful": {"auroc": auroc}}}
        if vs_random is not None:
            entry["vs_random"] = versus(vs_random)
        return entry

    def summary(noisy_all, noisy_random, low_all, clean_all, oracle_low=0.05):
        noisy = {"all_tokens": {}, "xtf_safe": arm(noisy_all, noisy_random),
                 "oracle": {**arm(0.2, 0.2), "vs_all_tokens": versus(0.2, oracle_low, 0.3)}}
        return {"0.15": noisy, "0.05": {"all_tokens": {}, "xtf_safe": arm(low_all, 0.01)},
                "0.00": {"all_tokens": {}, "xtf_safe": arm(clean_all)}}

    verdict = judge_replication(summary(0.02, 0.03, -0.01, -0.02))
    assert verdict["sensitive"] is True and verdict["replicates"] is True
    assert "xtf_safe" in verdict["criteria"]["methods"]
    assert judge_replication(summary(0.02, -0.01, 0.0, 0.0))["replicates"] is False  # not above its random drop
    assert judge_replication(summary(0.02, 0.03, -0.021, 0.0))["replicates"] is False  # costs 2.1 points at 5%
    insensitive = judge_replication(summary(0.02, 0.03, 0.0, 0.0, oracle_low=-0.01))
    assert insensitive["sensitive"] is False and insensitive["replicates"] is None
    partial = summary(0.02, 0.03, 0.0, 0.0)
    del partial["0.05"]
    assert judge_replication(partial)["replicates"] is None


def test_clean_nll_rule_on_hand_made_summaries():
    """N0-N1: the oracle's clean-NLL interval below 0 makes the base sensitive; the defaults pass when both
    15% intervals lie below 0 and 5% / 0% rise at most MAX_CLEAN_NLL_RISE."""
    from benchmarks.methods.miniature_criteria import MAX_CLEAN_NLL_RISE
    from benchmarks.methods.miniature_criteria import judge_replication

    def versus(nll_mean, nll_high):
        return {"seeds": {"mean": 0.0, "low": -0.01, "high": 0.01},
                "clean_nll": {"mean": nll_mean, "low": nll_mean - 0.01, "high": nll_high}}

    def summary(all_high=-0.001, random_high=-0.002, low_mean=0.0, clean_mean=0.0, oracle_high=-0.03):
        arm = {"exact_match": 0.5, "selection": {"harmful": {"auroc": 0.6}}}
        return {"0.15": {"all_tokens": {}, "oracle": {**arm, "vs_all_tokens": versus(-0.06, oracle_high)},
                         "xtf_safe": {**arm, "vs_all_tokens": versus(-0.01, all_high),
                                      "vs_random": versus(-0.01, random_high)}},
                "0.05": {"all_tokens": {}, "xtf_safe": {**arm, "vs_all_tokens": versus(low_mean, 0.01),
                                                        "vs_random": versus(0.0, 0.01)}},
                "0.00": {"all_tokens": {}, "xtf_safe": {**arm, "vs_all_tokens": versus(clean_mean, 0.01)}}}

    verdict = judge_replication(summary())
    assert verdict["nll_sensitive"] is True and verdict["nll_lowered"] is True
    assert "oracle -0.0600" in verdict["nll_why"]
    assert judge_replication(summary(all_high=0.0))["nll_lowered"] is False  # interval touches 0
    assert judge_replication(summary(random_high=0.001))["nll_lowered"] is False  # not below its random drop
    assert judge_replication(summary(low_mean=MAX_CLEAN_NLL_RISE))["nll_lowered"] is True  # at the tolerance
    assert judge_replication(summary(clean_mean=MAX_CLEAN_NLL_RISE + 1e-4))["nll_lowered"] is False
    blind = judge_replication(summary(oracle_high=0.001))
    assert blind["nll_sensitive"] is False and blind["nll_lowered"] is None
    without_oracle = summary()
    del without_oracle["0.15"]["oracle"]
    verdict = judge_replication(without_oracle)
    assert verdict["nll_sensitive"] is None and verdict["nll_lowered"] is None and "oracle n/a" in verdict["nll_why"]
    older = summary()  # a summary computed before the clean NLL was compared
    del older["0.15"]["xtf_safe"]["vs_random"]["clean_nll"]
    verdict = judge_replication(older)
    assert verdict["nll_lowered"] is None and verdict["nll_why"] == "no clean-NLL comparison in the summary"
    hair = summary(random_high=-3.5e-05)
    assert judge_replication(hair)["nll_lowered"] is True and "-3.5e-05]" in judge_replication(hair)["nll_why"]


def test_command_line_overrides_the_plans_seeds_and_base(monkeypatch, tmp_path):
    """--seeds, --base-seed and --levels reach the cells a --partial run computes (the plan is otherwise the
    flag's: the replication's arms and its base configuration but for the seed)."""
    import dataclasses

    from benchmarks.methods import miniature

    seen = {}

    def record(plan, partial, *, levels=None, cache_dir=None):
        seen.update(plan=plan, partial=partial, levels=levels, cache_dir=cache_dir)

    monkeypatch.setattr(miniature, "run_cells", record)
    status = miniature.main(["--replication", "--base-seed", "2", "--seeds", "7", "--levels", "0.05", "0.0",
                             "--partial", str(tmp_path / "part.json"), "--cache-dir", str(tmp_path)])
    plan = seen["plan"]
    assert status == 0 and plan.seeds == (7,) and seen["levels"] == (0.05, 0.0)
    default = miniature.replication_plan()
    assert plan.base == dataclasses.replace(default.base, seed=2) and default.base.seed == 1
    assert plan.cells == default.cells and seen["cache_dir"] == str(tmp_path)


@pytest.mark.slow
def test_sft_epochs_first_epoch_is_the_miniature_cell(quick, quick_cache, tmp_path):
    """The learning curve's epoch 1 reproduces the miniature's cell (all tokens and oracle: same data, order,
    optimizer, evaluation); later epochs keep training (the loss on the pool is not what it was)."""
    import dataclasses

    from benchmarks.methods import sft_epochs
    from benchmarks.methods.miniature import quick_plan
    from benchmarks.methods.sft_epochs import learning_curve
    from benchmarks.methods.sft_epochs import report
    from xtf_kernels.datasets.miniature import load_base
    from xtf_kernels.demo.experiment import run_cell

    plan = quick_plan()
    base = load_base(plan.base, cache_dir=quick_cache)
    config = dataclasses.replace(plan.cells[0.15], arms=("all_tokens", "oracle"), random_for=())
    cell = run_cell(base.model, base.tokenizer, noise=0.15, seed=1, config=config)
    curve = learning_curve(base.model, base.tokenizer, noise=0.15, seed=1, epochs=2, config=config)
    assert curve["base"]["exact_match"] == cell["base"]["exact_match"]
    for arm in ("all_tokens", "oracle"):
        first, second = curve["arms"][arm]
        evaluation = cell["arms"][arm]["evaluation"]
        assert first["epoch"] == 1 and second["epoch"] == 2
        assert first["exact_match"] == evaluation["exact_match"]
        assert first["clean_nll"] == pytest.approx(evaluation["clean_nll"], rel=1e-6)
        assert second["clean_nll"] != first["clean_nll"]
    results = {"format": "xtf-miniature-sft-epochs", "version": 1,
               "environment": {"machine": "m", "torch": "t", "seconds": 6.0}, "noise": 0.15, "seeds": [1],
               "lr": config.lr, "base_seeds": [0], "epochs": 2,
               "runs": [{"base_seed": 0, "seed": 1, **curve}]}
    text = report(results)
    assert text.count("\n| 0 | ") == 3  # the base, then epochs 1 and 2
    assert "Machine: m; 0.1 minutes" in text
    (tmp_path / "sft_epochs.json").write_text(json.dumps(results))
    assert sft_epochs.main(["--refresh", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "sft_epochs.md").read_text() == text
    (tmp_path / "sft_epochs.json").write_text(json.dumps({**results, "format": "xtf-miniature-benchmark"}))
    with pytest.raises(ValueError, match="not a learning-curve result of version 1"):
        sft_epochs.main(["--refresh", "--out", str(tmp_path)])
