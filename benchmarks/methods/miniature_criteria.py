"""When does a token filter "work" on the miniature?  Written down before the full run, applied to its numbers.

A method (an arm other than all tokens, the oracle and the random controls) WORKS when all of these hold:

C1 helps under noise: at 15% harmful noise, the 95% per-seed interval of its held-out exact match minus all
   tokens' lies above 0, and so does the interval against a random drop of the same size;
C2 safe without noise: at 0% noise its mean exact match is at most 2 points below all tokens';
C3 finds the noise: at 15% noise its AUROC of harmful against clean tokens (boilerplate apart) is >= 0.6
   (a method without a per-token score is ranked by its binary drop);
C4 (XTF's union only) at least as good as its best rule: the upper end of the per-seed interval of the union
   minus its best single rule (by mean exact match at 15%) is >= 0.

C0 the benchmark is sensitive: at 15% noise the oracle's per-seed interval against all tokens lies above 0.
   Without C0 no verdict is given: the benchmark cannot tell a method that helps from one that does not,
   and must be fixed first.
"""

from __future__ import annotations

NOISY, CLEAN = 0.15, 0.0
MAX_CLEAN_LOSS = 0.02
MIN_AUROC = 0.6
NOT_METHODS = ("all_tokens", "oracle")
XTF_RULES = ("xtf_RI", "xtf_KN", "xtf_TR")
UNIONS = ("xtf_paper", "xtf_safe")


def _level(summary: dict, noise: float) -> dict | None:
    return summary.get(f"{noise:.2f}")


def _interval_low(entry: dict, key: str) -> float | None:
    return entry[key]["seeds"]["low"] if key in entry else None


def judge(summary: dict) -> dict:
    """``summary``: noise level (``"0.15"``) -> :func:`xtf_kernels.demo.aggregate.compare` output.

    Returns {"sensitive": C0, "methods": {arm: {"C1", "C2", "C3", "C4", "works", "why"}}}; a criterion whose
    noise level was not run is None, and so is "works" then.
    """
    noisy, clean = _level(summary, NOISY), _level(summary, CLEAN)
    sensitive = None
    if noisy is not None and "oracle" in noisy:
        sensitive = noisy["oracle"]["vs_all_tokens"]["seeds"]["low"] > 0
    arms = [a for a in (noisy or clean or {}) if a not in NOT_METHODS and not a.startswith("random:")]
    methods = {}
    for arm in arms:
        verdict, why = {}, []
        if noisy is not None and arm in noisy:
            entry = noisy[arm]
            low_all, low_random = _interval_low(entry, "vs_all_tokens"), _interval_low(entry, "vs_random")
            verdict["C1"] = low_all is not None and low_all > 0 and low_random is not None and low_random > 0
            why.append(f"15%: vs all tokens low {low_all:+.3f}, vs random low "
                       f"{'n/a' if low_random is None else f'{low_random:+.3f}'}")
            auroc = entry["selection"]["harmful"]["auroc"]
            verdict["C3"] = auroc is not None and auroc >= MIN_AUROC
            why.append(f"AUROC {'n/a' if auroc is None else f'{auroc:.2f}'}")
            if arm in UNIONS:
                rules = [r for r in XTF_RULES if r in noisy]
                if rules:
                    best = max(rules, key=lambda r: noisy[r]["exact_match"])
                    per_seed = [u - b for u, b in zip(entry["exact_match_per_seed"],
                                                      noisy[best]["exact_match_per_seed"])]
                    from xtf_kernels.demo.statistics import paired_interval

                    high = paired_interval(per_seed)["high"]
                    verdict["C4"] = high >= 0
                    why.append(f"union - best rule ({best}) high {high:+.3f}")
        else:
            verdict["C1"] = verdict["C3"] = None
        if clean is not None and arm in clean:
            mean = clean[arm]["vs_all_tokens"]["seeds"]["mean"]
            verdict["C2"] = mean >= -MAX_CLEAN_LOSS
            why.append(f"0%: mean {mean:+.3f}")
        else:
            verdict["C2"] = None
        needed = [verdict.get(c) for c in ("C1", "C2", "C3")] + ([verdict["C4"]] if "C4" in verdict else [])
        verdict["works"] = None if None in needed or sensitive is not True else all(needed)
        verdict["why"] = "; ".join(why)
        methods[arm] = verdict
    return {"sensitive": sensitive, "methods": methods}


# Choosing XTF's defaults from the safeguard ladder (``--safeguards``), written down before the ladder's run:
#
# L1 a safeguard is worth having when its rung (the paper preset plus that safeguard alone) is at least as good
#    as the paper preset: the per-seed interval of its exact match minus the paper preset's has an upper end
#    >= 0 at 15% noise and at 0% noise (it costs nothing measurable) and its mean is > 0 at one level or it
#    drops fewer protected tokens (answer digits, eos, template) than the paper preset (it helps or protects);
# L2 the default configuration is, of the guarded candidates (every safeguard on the paper's thresholds, which
#    were the library's defaults when this was written; the same with 5% rates per rule; the same without KN),
#    the one with the highest mean exact match at 15% noise among those that lose at most 2 points against all
#    tokens at 0% noise (C2); when none does, the one that loses least at 0%, and XTF is then not recommended
#    at any setting on this evidence.
# (The ladder's arms were named xtf_safe / xtf_safe+rates / xtf_safe-KN when these rules were written and run;
# renamed guarded after the run changed the defaults: the same configurations, checked equal in code.)
SAFE_CANDIDATES = ("xtf_guarded", "xtf_guarded+rates", "xtf_guarded-KN")


def _protected_dropped(entry: dict) -> float:
    return sum(entry["selection"]["protected_drop_rate"].values())


def judge_ladder(summary: dict) -> dict:
    """``summary``: noise level -> :func:`compare` output with each rung's ``vs_preset`` (the ladder plan).

    Returns {"safeguards": {rung: {"worth_having", "why"}} for the paper-preset rungs (L1), "default": the arm
    L2 picks, "recommended": whether it satisfies C2, "why"}.
    """
    noisy, clean = _level(summary, NOISY), _level(summary, CLEAN)
    out: dict = {"safeguards": {}}
    for arm, entry in (noisy or {}).items():
        if not arm.startswith("xtf_paper+") or clean is None or arm not in clean:
            continue
        levels = {"15%": entry, "0%": clean[arm]}
        presets = {"15%": noisy["xtf_paper"], "0%": clean["xtf_paper"]}
        no_cost = all(e["vs_preset"]["seeds"]["high"] >= 0 for e in levels.values())
        helps = any(e["vs_preset"]["seeds"]["mean"] > 0 for e in levels.values())
        protects = any(_protected_dropped(levels[k]) < _protected_dropped(presets[k]) for k in levels)
        out["safeguards"][arm] = {
            "worth_having": no_cost and (helps or protects),
            "why": "; ".join(f"{k}: {e['vs_preset']['seeds']['mean']:+.3f} [{e['vs_preset']['seeds']['low']:+.3f}, "
                             f"{e['vs_preset']['seeds']['high']:+.3f}] vs the paper preset, protected dropped "
                             f"{_protected_dropped(e):.2f} vs {_protected_dropped(presets[k]):.2f}"
                             for k, e in levels.items())}
    candidates = [a for a in SAFE_CANDIDATES if noisy and clean and a in noisy and a in clean]
    if candidates:
        safe = [a for a in candidates if clean[a]["vs_all_tokens"]["seeds"]["mean"] >= -MAX_CLEAN_LOSS]
        if safe:
            best = max(safe, key=lambda a: noisy[a]["exact_match"])
        else:
            best = max(candidates, key=lambda a: clean[a]["vs_all_tokens"]["seeds"]["mean"])
        out.update(default=best, recommended=bool(safe),
                   why="; ".join(f"{a}: 15% exact match {noisy[a]['exact_match']:.3f}, 0% vs all tokens "
                                 f"{clean[a]['vs_all_tokens']['seeds']['mean']:+.3f}" for a in candidates))
    return out


# The ladder's second round (``--tr-anchors``), written down before its run, after the main run found the
# configuration L2 chose (guarded + 5% rates) at 0.0% exact match with 5% noise (TR dropped " The" of "The
# answer is" at every occurrence):
# L3 the default configuration is, of guarded + rates and its variants (TR anchors 0.25, TR anchors 0.5, no TR),
#    the one with the highest mean exact match at 15% noise among those whose mean exact match is at most 2
#    points below all tokens' at 0% AND at 5% noise; when none is, the one whose worst loss over 0% and 5% is
#    smallest, and XTF is then not recommended at any setting on this evidence.
ROUND_2_CANDIDATES = ("xtf_guarded+rates", "xtf_guarded+rates+tr_anchors", "xtf_guarded+rates+tr_anchors_half",
                      "xtf_guarded+rates-TR")
LOW_NOISE = 0.05


def judge_tr_anchors(summary: dict) -> dict:
    """``summary``: noise level -> :func:`compare` output of the second round. Returns {"default", "recommended",
    "why"} by L3 (empty when a level is missing)."""
    noisy, low, clean = _level(summary, NOISY), _level(summary, LOW_NOISE), _level(summary, CLEAN)
    if noisy is None or low is None or clean is None:
        return {}
    candidates = [a for a in ROUND_2_CANDIDATES if a in noisy and a in low and a in clean]
    if not candidates:
        return {}

    def worst(arm: str) -> float:
        return min(level[arm]["vs_all_tokens"]["seeds"]["mean"] for level in (low, clean))

    safe = [a for a in candidates if worst(a) >= -MAX_CLEAN_LOSS]
    best = max(safe, key=lambda a: noisy[a]["exact_match"]) if safe else max(candidates, key=worst)
    return {"default": best, "recommended": bool(safe),
            "why": "; ".join(f"{a}: 15% exact match {noisy[a]['exact_match']:.3f}, worst of 5% / 0% vs all tokens "
                             f"{worst(a):+.3f}" for a in candidates)}
