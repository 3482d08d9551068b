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

from xtf_kernels.demo.experiment import RI_SCORE_LADDER

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


# The third round (``--remaining-safeguards``), written down before its run: the options the first two rounds
# left unmeasured that change which tokens are dropped, each against the configuration it changes.
# L4 RI's score in the library's defaults changes from "offdiag" to another ("mean": the paper's, the diagonal
#    included; "relative"; "sum") only when that rung's per-seed interval of exact match minus the defaults'
#    lies above 0 at 15% noise, its mean against the defaults is >= 0 at 5%, and its mean is at most 2 points
#    below all tokens' at 0% and at 5%; of several such, the highest mean at 15%. Otherwise "offdiag" stays.
# L5 self-evolving Token Cleaning with a trusted first part (the trusted set as round 0, every part of the pool
#    cleaned) is recommended when, against the same schedule with nothing dropped (the trusted set, then the
#    pool with every token: the control matched in data and steps), its per-seed interval at 15% noise lies
#    above 0 and its mean is at most 2 points below the control's at 5% and at 0%. Otherwise self-evolving
#    cleaning is not recommended on this evidence, with a trusted part or without.
# L6 the per-round reference check (does the current reference beat the base on trusted held-out data?) is
#    informative when, pooled over seeds at 15% and 5% noise and over both self-evolving arms, the rounds it
#    flags drop harmful tokens with a lower mean precision than the rounds it passes. When it flags no round or
#    every round, it is not informative on this evidence.
# (RHO-1 over a rolling window of earlier batches was planned as L7 and dropped before the run: on a tiny cell
# it dropped 62% of the tokens at keep ratio 0.6, against per-batch RHO-1's 40%, because the model's losses
# fall during the epoch, so no control matched in what it drops.)
SELF_EVOLVING_ARMS = ("tc_self_evolving", "tc_self_evolving_trusted")


def _average(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _vs(level: dict, arm: str, key: str = "vs_preset") -> dict:
    return level[arm][key]["seeds"]


def judge_remaining(summary: dict) -> dict:
    """``summary``: noise level -> :func:`compare` output of the third round, each rung with its ``vs_preset``.
    Returns {"ri_score", "trusted_part", "reference_check"}, each {"verdict", "why"} (a rule whose
    arms or levels are missing is left out). The per-round checks come from ``summary[level][arm]["rounds"]``."""
    noisy, low, clean = _level(summary, NOISY), _level(summary, LOW_NOISE), _level(summary, CLEAN)
    out: dict = {}
    if noisy and low and clean:
        rungs = [a for a in RI_SCORE_LADDER
                 if all(a in level and "vs_preset" in level[a] for level in (noisy, low, clean))]
        if rungs:
            def passes(arm: str) -> bool:
                return (_vs(noisy, arm)["low"] > 0 and _vs(low, arm)["mean"] >= 0
                        and min(_vs(level, arm, "vs_all_tokens")["mean"] for level in (low, clean)) >= -MAX_CLEAN_LOSS)

            winners = [a for a in rungs if passes(a)]
            out["ri_score"] = {
                "verdict": max(winners, key=lambda a: noisy[a]["exact_match"]) if winners else "xtf_safe",
                "why": "; ".join(f"{a}: 15% vs defaults {_vs(noisy, a)['mean']:+.3f} [{_vs(noisy, a)['low']:+.3f}, "
                                 f"{_vs(noisy, a)['high']:+.3f}], 5% {_vs(low, a)['mean']:+.3f}" for a in rungs)}
        arm = "tc_self_evolving_trusted"
        if all(arm in level and "vs_preset" in level[arm] for level in (noisy, low, clean)):
            verdict = (_vs(noisy, arm)["low"] > 0
                       and min(_vs(level, arm)["mean"] for level in (low, clean)) >= -MAX_CLEAN_LOSS)
            out["trusted_part"] = {
                "verdict": verdict,
                "why": "vs the trusted set then every token: " + "; ".join(
                    f"{name} {_vs(level, arm)['mean']:+.3f} [{_vs(level, arm)['low']:+.3f}, "
                    f"{_vs(level, arm)['high']:+.3f}]" for name, level in (("15%", noisy), ("5%", low), ("0%", clean)))}
    rounds = [r for level in (noisy, low) if level for arm in SELF_EVOLVING_ARMS if arm in level
              for r in level[arm].get("rounds", []) if r.get("precision") is not None and "beats_base" in r]
    if rounds:
        flagged = [r["precision"] for r in rounds if not r["beats_base"]]
        passed = [r["precision"] for r in rounds if r["beats_base"]]
        verdict = bool(flagged and passed) and _average(flagged) < _average(passed)
        out["reference_check"] = {
            "verdict": verdict,
            "why": f"{len(flagged)} of {len(rounds)} rounds flagged; precision of their drops "
                   f"{_average(flagged):.3f} vs {_average(passed):.3f}"
                   " in the rounds passed"}
    return out


# A replication (``--replication``), written down before its run: the library's defaults were chosen on base
# seed 0 and SFT seeds 0-4 (three ladder rounds). Do their findings hold on a base pretrained from seed 1 and
# fresh SFT draws (seeds 5-9), nothing tuned on them?
# R0 the new base can see a perfect filter: at 15% noise the oracle's per-seed interval against all tokens lies
#    above 0; without it no verdict.
# R1 the defaults' direction replicates: at 15% noise their mean exact match minus all tokens' is > 0 and
#    minus their matched random drop's is > 0, and at 5% and 0% noise their mean is at most 2 points below all
#    tokens'. (C1-C3 are reported as for the main run.)
# After the run on base seed 1 failed R0 (fine-tuning on every token reached 10% exact match, against 60% on
# base seed 0), the same plan and rules were applied to base seed 2 (``--base-seed 2``), before its run, to
# tell an unlucky base from a lucky one.
#
# The clean held-out NLL (the mean NLL of the 200 clean held-out responses), written down after an exploratory
# look at the three runs above and before the confirmation run on a base from seed 3 with SFT seeds 10-14
# (``--replication --base-seed 3 --seeds 10 11 12 13 14``), nothing of which had been run. On every one of
# the three bases the oracle lowered it at 15% noise (-0.067, -0.057, -0.080 nats per token, intervals below 0)
# even where exact match could not see the oracle, and the defaults lowered it against all tokens (-0.013,
# -0.010, -0.012) and against their random drop (-0.014, -0.007, -0.013): a smooth measure of how well the
# model fits clean answers, where exact match waits for the two-step task to be learnt at all. Applied to those
# runs, N1 below holds on bases 0 and 2 and fails on base 1 (its interval against the random drop reaches
# +0.0001); the rule was not tuned to pass them.
# N0 the base can see a perfect filter on the clean NLL: at 15% noise the oracle's per-seed interval of clean
#    NLL minus all tokens' lies below 0; without it no N1 verdict.
# N1 the defaults lower the clean NLL: at 15% noise their per-seed interval of clean NLL minus all tokens' lies
#    below 0, and so does the interval against their matched random drop; at 5% and 0% noise their mean is at
#    most MAX_CLEAN_NLL_RISE above all tokens'.
# (Exact match stays the main criteria's measure: N0-N1 say whether the defaults move the model the right way,
# not whether it then answers more problems.)
REPLICATION_ARM = "xtf_safe"
MAX_CLEAN_NLL_RISE = 0.005  # nats per token: a tenth of the smallest oracle gain above, 0.5% of a token's odds


def judge_replication(summary: dict) -> dict:
    """``summary``: noise level -> :func:`compare` output of the replication. Returns {"criteria": the main
    criteria's verdicts, "sensitive": R0, "replicates": R1 (None without R0), "why", "nll_sensitive": N0 (None
    without an oracle or a clean-NLL comparison), "nll_lowered": N1 (None without N0), "nll_why"}; without a
    level or the random control the N0-N1 keys are absent and "replicates" is None."""
    noisy, low, clean = _level(summary, NOISY), _level(summary, LOW_NOISE), _level(summary, CLEAN)
    out: dict = {"criteria": judge(summary)}
    sensitive = out["criteria"]["sensitive"]
    out["sensitive"] = sensitive
    arm = REPLICATION_ARM
    if not (noisy and low and clean and arm in noisy and "vs_random" in noisy[arm]):
        out.update(replicates=None, why="a level or the random control is missing")
        return out
    versus_all, versus_random = (noisy[arm][key]["seeds"]["mean"] for key in ("vs_all_tokens", "vs_random"))
    worst = min(level[arm]["vs_all_tokens"]["seeds"]["mean"] for level in (low, clean))
    holds = versus_all > 0 and versus_random > 0 and worst >= -MAX_CLEAN_LOSS
    out.update(replicates=holds if sensitive else None,
               why=f"15%: {versus_all:+.3f} vs all tokens, {versus_random:+.3f} vs random; worst of 5% / 0% "
                   f"{worst:+.3f}")
    out.update(_judge_clean_nll(noisy, low, clean, arm))
    return out


def nats(value: float) -> str:
    """A clean-NLL difference in nats, signed: four decimals, or two significant digits below 0.001 (so an upper
    end of -0.00004 does not print as -0.0000)."""
    return f"{value:+.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:+.1e}"


def _nats_interval(entry: dict) -> str:
    return f"{nats(entry['mean'])} [{nats(entry['low'])}, {nats(entry['high'])}]"


def _judge_clean_nll(noisy: dict, low: dict, clean: dict, arm: str) -> dict:
    """N0-N1 on the per-seed clean-NLL intervals (``["clean_nll"]`` of each paired comparison); both None when
    the summary has no clean-NLL comparison (computed before it was added)."""
    comparisons = [noisy[arm]["vs_all_tokens"], noisy[arm]["vs_random"],
                   *(level[arm]["vs_all_tokens"] for level in (low, clean))]
    if not all("clean_nll" in c for c in comparisons):
        return {"nll_sensitive": None, "nll_lowered": None, "nll_why": "no clean-NLL comparison in the summary"}
    oracle = noisy.get("oracle", {}).get("vs_all_tokens", {}).get("clean_nll")
    sensitive = None if oracle is None else oracle["high"] < 0
    versus_all, versus_random = (noisy[arm][key]["clean_nll"] for key in ("vs_all_tokens", "vs_random"))
    worst = max(level[arm]["vs_all_tokens"]["clean_nll"]["mean"] for level in (low, clean))
    holds = versus_all["high"] < 0 and versus_random["high"] < 0 and worst <= MAX_CLEAN_NLL_RISE
    return {"nll_sensitive": sensitive, "nll_lowered": holds if sensitive else None,
            "nll_why": f"15%: oracle {'n/a' if oracle is None else _nats_interval(oracle)}; defaults "
                       f"{_nats_interval(versus_all)} vs all tokens, {_nats_interval(versus_random)} vs random; "
                       f"highest of 5% / 0% {nats(worst)}"}
