"""The demo's conclusions follow from its numbers: a win needs both intervals above 0; findings; the table."""

from __future__ import annotations

from xtf_kernels.demo.summary import format_summary
from xtf_kernels.demo.summary import verdict

from .fake_report import fake_report


def test_a_win_needs_both_intervals_above_zero():
    # Token Cleaning: +15 [+8, +22] against all tokens and +12 [+7, +17] against its random drop
    out = verdict(fake_report())
    assert out["best_arm"] == "tc_fixed" and out["filtering_wins"] is True
    assert ("Filtering beat both training on every token and a random drop of the same size here: Token Cleaning "
            "(fixed).") in out["findings"]


def test_beating_all_tokens_but_not_random_is_no_win():
    report = fake_report()
    report["arms"]["tc_fixed"]["vs_random"].update(mean=0.02, low=-0.03, high=0.07)
    out = verdict(report)
    assert out["filtering_wins"] is False and out["best_arm"] == "tc_fixed"
    assert "At this scale no filter beat both training on every token and a random drop of the same size." in \
        out["findings"]


def test_the_oracle_and_random_drops_are_never_the_best_arm_and_ties_go_to_all_tokens():
    report = fake_report()
    for arm in report["arms"].values():
        if arm["evaluation"] is not None:
            arm["evaluation"]["exact_match"] = 0.3
    report["arms"]["oracle"]["evaluation"]["exact_match"] = 0.9
    report["arms"]["random:tc_fixed"]["evaluation"]["exact_match"] = 0.8
    assert verdict(report)["best_arm"] == "all_tokens"


def test_findings_state_the_noise_the_selection_and_the_intervals():
    findings = verdict(fake_report())["findings"]
    assert findings[0] == ("15.0% of the 1,000 response tokens are harmful noise (wrong numbers 5.0%, off-domain "
                           "sentences 6.0%, garbled artefacts 4.0%): the precision of dropping tokens at random; "
                           "boilerplate, harmless, is 3.0%.")
    assert findings[1].startswith("The base model before fine-tuning: exact match 20.0%")
    assert ("Token Cleaning (fixed) dropped 40.0% of the response tokens (precision 35.0%, recall 90.0%, AUROC "
            "0.80); exact match 55.0%, +15.0 [+8.0, +22.0] points against all tokens and +12.0 [+7.0, +17.0] "
            "against a random drop of the same size (95% intervals over the held-out problems); NLL of the clean "
            "held-out answers 0.800, -0.015 [-0.025, -0.005] nats per token against all tokens and -0.012 [-0.022, "
            "-0.002] against the random drop (lower is better; over the problems of this one run, these intervals "
            "leave out how much training seeds differ).") in findings
    assert any(f.startswith("XTF KN alone dropped 20.0% of the answer digits") and "'Ġ='" in f for f in findings)
    assert findings[-1] == ("Loss memory at 736 x 128 x 4096 float32: fused 10 MiB against 40 MiB with "
                            "materialised logits (4.0x less).")


def test_a_failed_memory_side_is_reported():
    report = fake_report()
    report["memory"]["materialised"].update(status="oom", reason="out of memory", extra_bytes=None)
    report["memory"]["extra_ratio"] = None
    last = verdict(report)["findings"][-1]
    assert last == "The memory comparison did not complete: torch-materialised oom (out of memory)."


def test_printed_table():
    report = fake_report()
    report["verdict"] = verdict(report)
    lines = format_summary(report).splitlines()
    assert lines[0].startswith("xtf demo (quick, seed 0) on a CPU: 64 noisy problems, 1,000 response tokens, "
                               "15.0% harmful")
    rows = {line[:40].strip(): line for line in lines[3:3 + len(report["arms"]) + 1]}
    assert set(rows) == {*(a["label"] for a in report["arms"].values()), "base model"}
    assert "+15.0 [+8.0, +22.0]" in rows["Token Cleaning (fixed)"] and "55.0%" in rows["Token Cleaning (fixed)"]
    assert "scored only" in rows["XTF KN alone"]
    assert "fused 10 MiB extra, 12 ms/step; materialised 40 MiB extra" in "\n".join(lines)
    assert lines[-1] == "- " + report["verdict"]["findings"][-1]
