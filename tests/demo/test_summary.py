"""The demo's conclusions follow from its numbers: exact-match margins, the verdict, the findings, the table."""

from __future__ import annotations

import math

import pytest

from xtf_kernels.demo.summary import em_margin
from xtf_kernels.demo.summary import format_summary
from xtf_kernels.demo.summary import verdict

from .fake_report import fake_report


@pytest.mark.parametrize(("p1", "p2", "n"), [(0.5, 0.5, 100), (0.1, 0.3, 200), (0.0, 0.0, 50), (1.0, 0.25, 7)])
def test_margin_is_the_95_percent_half_width_of_a_difference(p1, p2, n):
    variance = p1 * (1 - p1) / n + p2 * (1 - p2) / n
    assert em_margin(p1, p2, n) == pytest.approx(1.96 * math.sqrt(variance), rel=1e-12)


def test_margin_at_one_half_and_100_problems():
    assert em_margin(0.5, 0.5, 100) == pytest.approx(0.13859, abs=1e-5)


def test_a_win_needs_more_than_the_margin():
    # Token Cleaning 0.30 against 0.10 on 200 problems: +0.20 > 1.96 sqrt(0.3*0.7/200 + 0.1*0.9/200) = 0.0759;
    # XTF 0.05: -0.05 is inside its margin 1.96 sqrt(0.05*0.95/200 + 0.09/200) = 0.0514.
    out = verdict(fake_report())
    assert out["best_method"] == "token_cleaning" and out["filtering_wins"] is True
    assert out["margin"] == pytest.approx(1.96 * math.sqrt((0.3 * 0.7 + 0.1 * 0.9) / 200))
    held_out = next(f for f in out["findings"] if f.startswith("Held-out exact match"))
    assert "XTF 5.0% (-5.0 points, no clear difference at +/-5.1)" in held_out
    assert "Token Cleaning 30.0% (+20.0 points, better at +/-7.6)" in held_out
    assert "Filtering beat training on every token here: Token Cleaning." in out["findings"]


def test_a_gain_inside_the_margin_is_not_a_win():
    report = fake_report()
    report["methods"]["token_cleaning"]["exact_match"] = 0.15  # +5 points, margin 1.96 sqrt(.1275+.09)/sqrt(200)
    out = verdict(report)
    assert out["filtering_wins"] is False and out["best_method"] == "token_cleaning"
    assert out["findings"][-2] == "At this scale filtering did not beat training on every token."


def test_ties_go_to_all_tokens():
    report = fake_report()
    for method in report["methods"].values():
        method["exact_match"] = 0.2
    out = verdict(report)
    assert out["best_method"] == "all_tokens" and out["filtering_wins"] is False


def test_findings_state_precision_recall_and_chance():
    findings = verdict(fake_report())["findings"]
    assert findings[0].startswith("20.0% of the 1,000 response tokens are corrupted")
    assert ("XTF dropped 40.0% of the response tokens; 25.0% of them were corrupted (precision) and they hold "
            "50.0% of the corrupted tokens (recall).") in findings
    assert "XTF rule KN fired on 30.0% of the tokens with precision 1.0% and recall 1.5% (below chance)." in findings
    assert "XTF rule TR fired on 20.0% of the tokens with precision 40.0% and recall 40.0%." in findings
    assert any(f.startswith("KN drops the tokens the base model already predicts") for f in findings)
    assert findings[-1] == "Loss memory at 736 x 64 x 4096 float32: fused 10 MiB against 40 MiB with materialised " \
                           "logits (4.0x less)."


def test_heldout_losses_are_reported_per_method():
    report = fake_report()
    for key, loss in (("all_tokens", 0.5), ("xtf", 0.9), ("token_cleaning", 0.4)):
        report["methods"][key]["heldout_loss"] = loss
    assert ("Held-out loss on the clean responses: all tokens 0.500, XTF 0.900, Token Cleaning 0.400; the base model "
            "0.700.") in verdict(report)["findings"]


def test_the_kn_explanation_only_when_kn_is_below_chance():
    report = fake_report()
    report["methods"]["xtf"]["rules"]["KN"]["precision"] = 0.5
    assert not any(f.startswith("KN drops") for f in verdict(report)["findings"])


def test_a_failed_memory_side_is_reported():
    report = fake_report()
    report["memory"]["materialised"].update(status="oom", reason="out of memory", extra_bytes=None)
    report["memory"]["extra_ratio"] = None
    last = verdict(report)["findings"][-1]
    assert last == "The memory comparison did not complete: torch-materialised oom (out of memory)."


def test_printed_table():
    report = fake_report()
    report["verdict"] = verdict(report)
    text = format_summary(report)
    lines = text.splitlines()
    assert lines[0].startswith("xtf demo (quick, seed 0) on a CPU: 64 noisy samples, 1,000 response tokens")
    row = {line.split("  ")[0]: line for line in lines[3:7]}
    assert set(row) == {"all tokens", "XTF", "Token Cleaning", "base model"}
    assert "600 ( 60.0%)" in row["XTF"] and "25.0%" in row["XTF"] and "5.0%" in row["XTF"]
    assert "1,000 (100.0%)" in row["all tokens"] and " n/a " in row["all tokens"]
    assert "KN dropped 300 (30.0%, 150 only by it), precision 1.0%, recall 1.5%" in text
    assert "fused 10 MiB extra, 12 ms/step (5,000 tokens/s); materialised 40 MiB extra" in text
    assert lines[-1] == "- " + report["verdict"]["findings"][-1]
