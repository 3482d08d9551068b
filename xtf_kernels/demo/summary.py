"""The demo's conclusions, derived from its measured numbers only, and the text table it prints.

A filter "wins" only when its exact match beats training on every token AND beats a random drop of the
same size, each by a 95% interval over the held-out problems that lies above 0 (paired per problem, so the
noise of two independent estimates is not double counted): beating all tokens alone could be the effect
of training on fewer tokens, not of choosing them.
"""

from __future__ import annotations

TRAINED_FILTERS = ("xtf_paper", "xtf_safe", "tc_fixed", "rho1")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _mib(x: int | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:,.0f} MiB"


def _points(entry: dict | None) -> str:
    if entry is None:
        return "n/a"
    return f"{100 * entry['mean']:+.1f} [{100 * entry['low']:+.1f}, {100 * entry['high']:+.1f}]"


def _nats(entry: dict | None) -> str:
    """A paired comparison's clean-NLL difference with its interval, in nats per token; "n/a" without one."""
    if entry is None:
        return "n/a"
    nll = entry["clean_nll"]
    return f"{nll['mean']:+.3f} [{nll['low']:+.3f}, {nll['high']:+.3f}]"


def _beats(entry: dict | None) -> bool:
    return entry is not None and entry["low"] > 0


def verdict(report: dict) -> dict:
    """``verdict`` of a report holding ``data``, ``base``, ``arms`` and ``memory`` (see :mod:`.report`)."""
    arms, data = report["arms"], report["data"]
    trained = {a: e for a, e in arms.items() if e["evaluation"] is not None}
    filters = [a for a in TRAINED_FILTERS if a in trained]
    candidates = ["all_tokens", *filters]
    best = max(candidates, key=lambda a: (trained[a]["evaluation"]["exact_match"], a == "all_tokens"))
    wins = [a for a in filters if _beats(trained[a]["vs_all_tokens"]) and _beats(trained[a]["vs_random"])]
    kinds = data["kind_fraction"]
    findings = [
        f"{_pct(data['noise_fraction'])} of the {data['response_tokens']:,} response tokens are harmful noise "
        f"(wrong numbers {_pct(kinds['wrong_number'])}, off-domain sentences {_pct(kinds['off_domain'])}, "
        f"garbled artefacts {_pct(kinds['garbled'])}): the precision of dropping tokens at random; boilerplate, "
        f"harmless, is {_pct(kinds['boilerplate'])}.",
        f"The base model before fine-tuning: exact match {_pct(report['base']['exact_match'])}, template followed "
        f"in {_pct(report['base']['format'])} of its answers; after fine-tuning on every token "
        f"{_pct(trained['all_tokens']['evaluation']['exact_match'])}.",
    ]
    for arm in [*filters, "oracle"]:
        if arm not in trained:
            continue
        entry = trained[arm]
        s, e = entry["selection"], entry["evaluation"]
        findings.append(
            f"{entry['label']} dropped {_pct(s['drop_rate'])} of the response tokens (precision "
            f"{_pct(s['precision'])}, recall {_pct(s['recall'])}, AUROC "
            f"{'n/a' if s['auroc'] is None else format(s['auroc'], '.2f')}); exact match {_pct(e['exact_match'])}, "
            f"{_points(entry['vs_all_tokens'])} points against all tokens and {_points(entry['vs_random'])} against "
            "a random drop of the same size (95% intervals over the held-out problems); NLL of the clean held-out "
            f"answers {e['clean_nll']:.3f}, {_nats(entry['vs_all_tokens'])} nats per token against all tokens and "
            f"{_nats(entry['vs_random'])} against the random drop (lower is better; over the problems of this one "
            "run, these intervals leave out how much training seeds differ)."
        )
    for arm, entry in arms.items():
        s = entry["selection"]
        if s is None or arm.startswith("random:") or arm == "oracle":
            continue
        protected = s["protected_dropped"]
        if max(protected.values()) > 0.05 or s["whole_types"]:
            findings.append(
                f"{entry['label']} dropped {_pct(protected['answer'])} of the answer digits, {_pct(protected['eos'])} "
                f"of the end-of-sequence tokens and {_pct(protected['template'])} of the template; "
                f"{s['whole_types']} token types at every occurrence"
                + (f" (e.g. {', '.join(repr(t) for t in s['whole_type_examples'][:4])})." if s["whole_types"] else ".")
            )
    if wins:
        findings.append("Filtering beat both training on every token and a random drop of the same size here: "
                        + " and ".join(arms[a]["label"] for a in wins) + ".")
    else:
        findings.append("At this scale no filter beat both training on every token and a random drop of the same "
                        "size.")
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
    return {"best_arm": best, "filtering_wins": bool(wins), "findings": findings}


def format_summary(report: dict) -> str:
    """The report as the text ``xtf demo`` prints: a row per arm, memory, findings."""
    data, config, env = report["data"], report["config"], report["environment"]
    lines = [
        f"xtf demo ({config['name']}, seed {config['seed']}) on {env['device']}: {data['train_samples']} noisy "
        f"problems, {data['response_tokens']:,} response tokens, {_pct(data['noise_fraction'])} harmful; "
        f"{report['model']['arch']} model with {report['model']['parameters']:,} parameters",
        "",
        f"{'arm':<40} {'drop':>6} {'prec.':>6} {'recall':>6} {'AUROC':>5} {'exact':>6} "
        f"{'vs all tokens [95%]':>21} {'vs random [95%]':>21} {'format':>6} {'NLL':>6}",
    ]
    for entry in report["arms"].values():
        s, e = entry["selection"], entry["evaluation"]
        auroc = "" if s is None or s["auroc"] is None else f"{s['auroc']:.2f}"
        lines.append(
            f"{entry['label']:<40} {_pct(s['drop_rate'] if s else 0.0):>6} "
            f"{_pct(s['precision']) if s else '':>6} {_pct(s['recall']) if s else '':>6} {auroc:>5} "
            + (f"{_pct(e['exact_match']):>6} {_points(entry['vs_all_tokens']):>21} {_points(entry['vs_random']):>21} "
               f"{_pct(e['format']):>6} {e['clean_nll']:>6.3f}" if e else f"{'(scored only, not trained)':>6}")
        )
    lines.append(f"{'base model':<40} {'':>6} {'':>6} {'':>6} {'':>5} {_pct(report['base']['exact_match']):>6}")
    memory = report["memory"]
    sides = []
    for name in ("fused", "materialised"):
        side = memory[name]
        if side["status"] == "ok":
            sides.append(f"{name} {_mib(side['extra_bytes'])} extra, {side['ms']:,.0f} ms/step")
        else:
            sides.append(f"{name} {side['status']}: {side['reason']}")
    lines += ["", f"Loss memory:    {memory['tokens']} x {memory['hidden']} x {memory['vocab']} {memory['dtype']} "
                  "fwd+bwd: " + "; ".join(sides), ""]
    lines.extend(f"- {finding}" for finding in report["verdict"]["findings"])
    return "\n".join(lines)
