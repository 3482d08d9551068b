"""Paired comparisons on hand-made cells: the clean-NLL differences per seed and per problem."""

from __future__ import annotations

import pytest

from xtf_kernels.demo.aggregate import paired


def _evaluation(sums, tokens, correct):
    return {"exact_match": sum(correct) / len(correct), "correct": correct, "clean_nll": sum(sums) / sum(tokens),
            "clean_nll_sum_per_problem": sums, "clean_tokens_per_problem": tokens}


def _cell(first, second, tokens, correct=(1, 0, 1)):
    return {"arms": {"filter": {"evaluation": _evaluation(first, tokens, list(correct))},
                     "all_tokens": {"evaluation": _evaluation(second, tokens, [1, 1, 0])}}}


def test_per_problem_nll_averages_to_the_token_weighted_difference():
    tokens = [2, 6, 4]  # mean response length 4
    cells = [_cell([1.0, 3.0, 2.0], [1.2, 4.2, 2.0], tokens), _cell([0.8, 2.4, 2.4], [1.0, 3.0, 2.0], tokens)]
    out = paired(cells, "filter", "all_tokens")
    weighted = [(6.0 - 7.4) / 12, (5.6 - 6.0) / 12]  # per seed: sums over all tokens
    assert out["clean_nll"]["mean"] == pytest.approx(sum(weighted) / 2)
    problems = out["clean_nll_problems"]
    assert problems["n"] == 6
    # (x - y) / 4 per problem: -0.05, -0.3, 0.0, -0.05, -0.15, +0.1
    assert problems["mean"] == pytest.approx((-0.05 - 0.3 + 0.0 - 0.05 - 0.15 + 0.1) / 6)
    assert problems["mean"] == pytest.approx(out["clean_nll"]["mean"])


def test_cells_without_per_problem_sums_give_the_per_seed_interval_only():
    cell = _cell([1.0, 3.0, 2.0], [1.2, 4.2, 2.0], [2, 6, 4])
    for entry in cell["arms"].values():
        del entry["evaluation"]["clean_nll_sum_per_problem"]
    out = paired([cell], "filter", "all_tokens")
    assert "clean_nll_problems" not in out and out["clean_nll"]["n"] == 1


def test_arms_scored_on_different_responses_are_refused():
    cell = _cell([1.0, 3.0, 2.0], [1.2, 4.2, 2.0], [2, 6, 4])
    cell["arms"]["all_tokens"]["evaluation"]["clean_tokens_per_problem"] = [2, 6, 5]
    with pytest.raises(ValueError, match="filter and all_tokens were scored on different held-out responses"):
        paired([cell], "filter", "all_tokens")
