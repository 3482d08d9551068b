"""Paired comparisons of the miniature's arms over seeds: the statistics the benchmark and the demo report.

For one noise level and the cells (seeds) run at it, :func:`compare` gives per arm the mean of every metric
over seeds, and against all tokens and against the arm's matched random drop: the per-seed exact-match
differences with a 95% t interval, the per-problem differences (pooled over seeds) with a 95% interval and a
sign-flip permutation test, and an exact McNemar test pooled over problems; and the per-seed differences in the
NLL of the clean held-out responses with a 95% t interval, and its per-problem differences (each response's
summed NLL over the mean response length, so they average to the token-weighted difference) pooled over
seeds with one. With one seed the per-seed intervals are points; the per-problem
intervals and the tests still apply.
"""

from __future__ import annotations

from .statistics import mcnemar
from .statistics import paired_interval
from .statistics import permutation_test


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _pooled_correct(cells: list[dict], arm: str) -> list[int]:
    return [c for cell in cells for c in cell["arms"][arm]["evaluation"]["correct"]]


def _per_seed(cells: list[dict], arm: str, against: str, metric: str) -> list[float]:
    return [cell["arms"][arm]["evaluation"][metric] - cell["arms"][against]["evaluation"][metric] for cell in cells]


def _nll_differences(cell: dict, arm: str, against: str) -> list[float]:
    """Per held-out problem of one cell: the summed clean NLL of ``arm`` minus ``against``'s over the mean
    response length (tokens), so the differences average to the difference of the token-weighted clean NLLs."""
    first, second = (cell["arms"][a]["evaluation"] for a in (arm, against))
    tokens = first["clean_tokens_per_problem"]
    if tokens != second["clean_tokens_per_problem"]:
        raise ValueError(f"{arm} and {against} were scored on different held-out responses")
    mean_length = sum(tokens) / len(tokens)
    return [(x - y) / mean_length for x, y in zip(first["clean_nll_sum_per_problem"],
                                                   second["clean_nll_sum_per_problem"], strict=True)]


def paired(cells: list[dict], arm: str, against: str, *, seed: int = 0) -> dict:
    """``arm`` minus ``against`` on held-out exact match (per seed and per problem) and on the NLL of the clean
    held-out responses (per seed, ``"clean_nll"``, and per problem pooled over seeds, ``"clean_nll_problems"``,
    where the cells recorded the per-problem sums: cells from before did not; lower is better, so a filter that
    helps has it below 0)."""
    per_seed = _per_seed(cells, arm, against, "exact_match")
    first, second = _pooled_correct(cells, arm), _pooled_correct(cells, against)
    per_problem = [a - b for a, b in zip(first, second)]
    out = {"against": against, "per_seed": per_seed, "seeds": paired_interval(per_seed),
           "problems": paired_interval(per_problem), "permutation_p": permutation_test(per_problem, seed=seed),
           "mcnemar": mcnemar(first, second),
           "clean_nll": paired_interval(_per_seed(cells, arm, against, "clean_nll"))}
    if all("clean_nll_sum_per_problem" in cell["arms"][a]["evaluation"] for cell in cells for a in (arm, against)):
        out["clean_nll_problems"] = paired_interval(
            [d for cell in cells for d in _nll_differences(cell, arm, against)])
    return out


def summarise_arm(cells: list[dict], arm: str) -> dict:
    """Means over seeds of the arm's evaluation and selection metrics (and self-evolving cleaning's rounds, each
    with its seed)."""
    evaluations = [cell["arms"][arm]["evaluation"] for cell in cells]
    out = {
        "exact_match": _mean([e["exact_match"] for e in evaluations]),
        "exact_match_per_seed": [e["exact_match"] for e in evaluations],
        "format": _mean([e["format"] for e in evaluations]),
        "clean_nll": _mean([e["clean_nll"] for e in evaluations]),
        "retention": _mean([e["retention"]["mean"] for e in evaluations]),
        "noise_reappears": {kind: _mean([e["noise_reappears"][kind] for e in evaluations])
                            for kind in evaluations[0]["noise_reappears"]},
    }
    if "rounds" in cells[0]["arms"][arm]:  # self-evolving cleaning: every round of every seed
        out["rounds"] = [{**row, "seed": cell["seed"]} for cell in cells for row in cell["arms"][arm]["rounds"]]
    selections = [cell["arms"][arm].get("selection") for cell in cells]
    if selections[0] is not None:
        out["selection"] = {
            "drop_rate": _mean([s["drop_rate"] for s in selections]),
            "harmful": {key: _mean([s["harmful"][key] for s in selections])
                        for key in ("precision", "recall", "auroc", "auprc")},
            "by_kind": {kind: {key: _mean([s["by_kind"][kind][key] for s in selections])
                               for key in ("precision", "recall", "auroc", "auprc")}
                        for kind in selections[0]["by_kind"]},
            "boilerplate_drop_rate": _mean([s["boilerplate_drop_rate"] for s in selections]),
            "protected_drop_rate": {kind: _mean([s["protected_drop_rate"][kind] for s in selections])
                                    for kind in selections[0]["protected_drop_rate"]},
            "whole_types": _mean([s["whole_types"]["count"] for s in selections]),
            "whole_type_share": _mean([s["whole_types"]["token_share"] for s in selections]),
            "whole_type_examples": selections[0]["whole_types"]["examples"],
        }
    return out


def compare(cells: list[dict]) -> dict:
    """Per arm: :func:`summarise_arm`, and :func:`paired` against all tokens and its matched random drop."""
    if not cells:
        raise ValueError("cells must not be empty")
    arms = [arm for arm, entry in cells[0]["arms"].items() if entry["evaluation"] is not None]
    out = {}
    for arm in arms:
        entry = summarise_arm(cells, arm)
        if arm != "all_tokens":
            entry["vs_all_tokens"] = paired(cells, arm, "all_tokens")
            control = f"random:{arm}"
            if control in cells[0]["arms"]:
                entry["vs_random"] = paired(cells, arm, control)
        out[arm] = entry
    return out
