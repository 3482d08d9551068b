"""The demo's conclusions, derived from its measured numbers only, and the text table it prints.

Exact match on n held-out problems is a proportion, so a difference between two runs is only read as a
win or a loss when it exceeds the 95% half-width 1.96 sqrt(p1 (1 - p1) / n + p2 (1 - p2) / n) (normal
approximation, the two runs treated as independent, which overstates the noise of a paired comparison
slightly and so errs towards "no difference").
"""

from __future__ import annotations

import math

METHOD_LABELS = {"all_tokens": "all tokens", "xtf": "XTF", "token_cleaning": "Token Cleaning"}
FILTERED = ("xtf", "token_cleaning")


def em_margin(p1: float, p2: float, n: int) -> float:
    """95% half-width of the difference of two exact-match rates over ``n`` problems each."""
    return 1.96 * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n) if n else 0.0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _mib(x: int | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:,.0f} MiB"


def verdict(report: dict) -> dict:
    """``verdict`` of a report holding ``data``, ``methods`` and ``memory`` (see :mod:`.report`)."""
    methods, data = report["methods"], report["data"]
    n = data["heldout_problems"]
    baseline = methods["all_tokens"]["exact_match"]
    margins = {m: em_margin(methods[m]["exact_match"], baseline, n) for m in FILTERED}
    best = max(METHOD_LABELS, key=lambda m: (methods[m]["exact_match"], m == "all_tokens"))
    wins = [m for m in FILTERED if methods[m]["exact_match"] - baseline > margins[m]]
    findings = [
        f"{_pct(data['noise_fraction'])} of the {data['response_tokens']:,} response tokens are corrupted: "
        "the precision of dropping tokens at random."
    ]
    for m in FILTERED:
        entry = methods[m]
        findings.append(
            f"{METHOD_LABELS[m]} dropped {_pct(1 - entry['kept_fraction'])} of the response tokens; "
            f"{_pct(entry['precision'])} of them were corrupted (precision) and they hold "
            f"{_pct(entry['recall'])} of the corrupted tokens (recall)."
        )
    for rule, entry in methods["xtf"]["rules"].items():
        findings.append(
            f"XTF rule {rule} fired on {_pct(entry['fraction'])} of the tokens with precision "
            f"{_pct(entry['precision'])} and recall {_pct(entry['recall'])}"
            + (" (below chance)." if entry["dropped"] and entry["precision"] < data["noise_fraction"] else ".")
        )
    kn = methods["xtf"]["rules"].get("KN")
    if kn is not None and kn["dropped"] and kn["precision"] < data["noise_fraction"]:
        findings.append("KN drops the tokens the base model already predicts with p > 0.95 (no new knowledge); "
                        "a corrupted token is rarely that predictable, so what KN drops here is mostly clean text "
                        "the base model already knows.")
    findings.append("Held-out loss on the clean responses: " + ", ".join(
        f"{METHOD_LABELS[m]} {methods[m]['heldout_loss']:.3f}" for m in METHOD_LABELS
    ) + f"; the base model {report['base']['heldout_loss']:.3f}.")
    comparisons = []
    for m in FILTERED:
        diff = methods[m]["exact_match"] - baseline
        reading = ("better" if diff > margins[m] else "worse" if diff < -margins[m] else "no clear difference")
        comparisons.append(f"{METHOD_LABELS[m]} {_pct(methods[m]['exact_match'])} ({100 * diff:+.1f} points, "
                           f"{reading} at +/-{100 * margins[m]:.1f})")
    findings.append(f"Held-out exact match on {n} problems: all tokens {_pct(baseline)}, " + ", ".join(comparisons)
                    + f"; the base model before fine-tuning {_pct(report['base']['exact_match'])}.")
    if wins:
        findings.append("Filtering beat training on every token here: "
                        + " and ".join(METHOD_LABELS[m] for m in wins) + ".")
    else:
        findings.append("At this scale filtering did not beat training on every token.")
    memory = report["memory"]
    fused, materialised = memory["fused"], memory["materialised"]
    if memory["extra_ratio"] is not None:
        findings.append(
            f"Loss memory at {memory['tokens']} x {memory['hidden']} x {memory['vocab']} {memory['dtype']}: "
            f"fused {_mib(fused['extra_bytes'])} against {_mib(materialised['extra_bytes'])} with materialised "
            f"logits ({memory['extra_ratio']:.1f}x less)."
        )
    else:
        failed = fused if fused["status"] != "ok" else materialised
        findings.append(f"The memory comparison did not complete: {failed['provider']} {failed['status']} "
                        f"({failed['reason']}).")
    return {"best_method": best, "filtering_wins": bool(wins), "margin": max(margins.values()),
            "findings": findings}


def format_summary(report: dict) -> str:
    """The report as the text ``xtf demo`` prints: a table per method, XTF's rules, memory, findings."""
    data, methods, config = report["data"], report["methods"], report["config"]
    env = report["environment"]
    lines = [
        f"xtf demo ({config['name']}, seed {config['seed']}) on {env['device']}: {data['train_samples']} noisy "
        f"samples, {data['response_tokens']:,} response tokens, {_pct(data['noise_fraction'])} corrupted; "
        f"{report['model']['arch']} model with {report['model']['parameters']:,} parameters",
        "",
        f"{'method':<15} {'kept tokens':>18} {'precision':>9} {'recall':>7} {'exact match':>11} "
        f"{'held-out loss':>13} {'train loss':>10} {'tokens/s':>9}",
    ]
    for key, label in METHOD_LABELS.items():
        m = methods[key]
        lines.append(
            f"{label:<15} {m['kept_tokens']:>10,} ({_pct(m['kept_fraction']):>6}) {_pct(m['precision']):>9} "
            f"{_pct(m['recall']):>7} {_pct(m['exact_match']):>11} {m['heldout_loss']:>13.3f} "
            f"{m['final_train_loss']:>10.3f} {m['tokens_per_second']:>9,.0f}"
        )
    lines.append(f"{'base model':<15} {'':>18} {'':>9} {'':>7} {_pct(report['base']['exact_match']):>11} "
                 f"{report['base']['heldout_loss']:>13.3f}")
    lines.append("")
    lines.append("XTF rules:      " + "  |  ".join(
        f"{rule} dropped {r['dropped']:,} ({_pct(r['fraction'])}, {r['only_this_rule']:,} only by it), "
        f"precision {_pct(r['precision'])}, recall {_pct(r['recall'])}"
        for rule, r in methods["xtf"]["rules"].items()
    ))
    memory = report["memory"]
    sides = []
    for name in ("fused", "materialised"):
        side = memory[name]
        if side["status"] == "ok":
            sides.append(f"{name} {_mib(side['extra_bytes'])} extra, {side['ms']:,.0f} ms/step "
                         f"({side['tokens_per_second']:,.0f} tokens/s)")
        else:
            sides.append(f"{name} {side['status']}: {side['reason']}")
    lines.append(f"Loss memory:    {memory['tokens']} x {memory['hidden']} x {memory['vocab']} {memory['dtype']} "
                 f"fwd+bwd: " + "; ".join(sides))
    lines.append("")
    lines.extend(f"- {finding}" for finding in report["verdict"]["findings"])
    return "\n".join(lines)
