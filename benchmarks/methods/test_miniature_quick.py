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
def quick(tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("quick"), tmp_path_factory.mktemp("cache")
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
    rows = list(csv.DictReader((out / "miniature.csv").open()))
    assert len(rows) == sum(len(c["arms"]) for cells in results["cells"].values() for c in cells)
    assert results["environment"]["load_average_end"] and results["plan"]["base_info"]["cached"] is False


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
