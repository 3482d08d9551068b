"""Writes the miniature benchmark's results as data: JSON (everything), CSV (one row per cell and arm),
Markdown tables and one figure, each file atomically."""

from __future__ import annotations

import csv
import io
import json
import os

from benchmarks.methods.miniature_criteria import nats
from xtf_kernels._atomic import atomic_write_bytes
from xtf_kernels._atomic import atomic_write_text
from xtf_kernels.demo.experiment import label

CSV_FIELDS = ("noise", "seed", "arm", "exact_match", "format", "clean_nll", "retention", "drop_rate", "precision",
              "recall", "auroc", "auprc", "answer_dropped", "eos_dropped", "template_dropped", "boilerplate_dropped",
              "whole_types", "seconds")


def _f(value, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def csv_rows(results: dict) -> list[dict]:
    rows = []
    for level, cells in results["cells"].items():
        for cell in cells:
            for arm, entry in cell["arms"].items():
                e, s = entry["evaluation"], entry.get("selection")
                rows.append({
                    "noise": level, "seed": cell["seed"], "arm": arm, "exact_match": e["exact_match"],
                    "format": e["format"], "clean_nll": e["clean_nll"], "retention": e["retention"]["mean"],
                    "drop_rate": s["drop_rate"] if s else 0.0,
                    "precision": s["harmful"]["precision"] if s else None,
                    "recall": s["harmful"]["recall"] if s else None,
                    "auroc": s["harmful"]["auroc"] if s else None, "auprc": s["harmful"]["auprc"] if s else None,
                    "answer_dropped": s["protected_drop_rate"]["answer"] if s else 0.0,
                    "eos_dropped": s["protected_drop_rate"]["eos"] if s else 0.0,
                    "template_dropped": s["protected_drop_rate"]["template"] if s else 0.0,
                    "boilerplate_dropped": s["boilerplate_drop_rate"] if s else 0.0,
                    "whole_types": s["whole_types"]["count"] if s else 0, "seconds": entry["seconds"],
                })
    return rows


def _interval(entry: dict | None) -> str:
    if entry is None:
        return "n/a"
    seeds = entry["seeds"]
    return f"{seeds['mean']:+.3f} [{seeds['low']:+.3f}, {seeds['high']:+.3f}]"


def _verdicts(criteria: dict) -> list[str]:
    lines: list[str] = []
    lines += [f"Benchmark sensitive (oracle above all tokens at 15%): **{criteria['sensitive']}**", "",
              "| method | works | C1 helps at 15% | C2 safe at 0% | C3 AUROC >= 0.6 | C4 union >= best rule "
              "| numbers |",
              "|---|---|---|---|---|---|---|"]
    for arm, verdict in criteria["methods"].items():
        lines.append(f"| {label(arm)} | **{verdict['works']}** | {verdict.get('C1')} | {verdict.get('C2')} | "
                     f"{verdict.get('C3')} | {verdict.get('C4', '')} | {verdict['why']} |")
    return lines


REMAINING_RULES = {"ri_score": "L4 (RI's score in the defaults)",
                   "trusted_part": "L5 (self-evolving Token Cleaning with a trusted first part recommended)",
                   "reference_check": "L6 (the per-round reference check informative)"}


def _ladder_verdicts(ladder: dict) -> list[str]:
    lines = []
    if "safeguards" in ladder:  # the first round: L1 per safeguard, then L2
        lines += ["L1 (a safeguard worth having: no measurable cost against the paper preset at 15% or 0%, and it "
                  "helps or protects):", "", "| safeguard | worth having | numbers |", "|---|---|---|"]
        for arm, verdict in ladder["safeguards"].items():
            lines.append(f"| {label(arm)} | **{verdict['worth_having']}** | {verdict['why']} |")
        lines.append("")
    if "default" in ladder:
        rule = "L2" if "safeguards" in ladder else "L3"
        lines += [f"{rule} (the default configuration): **{label(ladder['default'])}**; within 2 points of all tokens "
                  f"where required: **{ladder['recommended']}**. {ladder['why']}.", ""]
    if "replicates" in ladder:  # the replication: R0 / R1, then the main criteria
        lines += [f"R0 (the new base sees a perfect filter): **{ladder['sensitive']}**; R1 (the defaults' direction "
                  f"replicates): **{ladder['replicates']}**. {ladder['why']}.", ""]
        if "nll_lowered" in ladder:
            lines += [f"N0 (the base sees a perfect filter on the clean NLL): **{ladder['nll_sensitive']}**; N1 (the "
                      f"defaults lower the clean NLL): **{ladder['nll_lowered']}**. {ladder['nll_why']}.", ""]
        lines += _verdicts(ladder["criteria"]) + [""]
    for key, text in REMAINING_RULES.items():  # the third round
        if key in ladder:
            verdict = ladder[key]["verdict"]
            lines += [f"{text}: **{label(verdict) if isinstance(verdict, str) else verdict}**. "
                      f"{ladder[key]['why']}.", ""]
    return lines


def _nll_interval(versus: dict | None) -> str:
    """A paired comparison's per-seed clean-NLL difference with its interval; "n/a" without one."""
    if versus is None or "clean_nll" not in versus:  # results written before the clean NLL was compared
        return "n/a"
    d = versus["clean_nll"]
    return f"{nats(d['mean'])} [{nats(d['low'])}, {nats(d['high'])}]"


def _clean_nll(summary: dict) -> list[str]:
    """Per arm: the clean held-out NLL and its per-seed differences against all tokens and the random drop."""
    arms = [arm for arm in summary if arm != "all_tokens"]
    if not arms:
        return []
    lines = ["", "NLL of the clean held-out responses (nats per token; lower is better), per-seed differences "
             "[95%]:", "", "| arm | clean NLL | vs all tokens | vs matched random |", "|---|---|---|---|",
             f"| {label('all_tokens')} | {_f(summary['all_tokens']['clean_nll'], 4)} | n/a | n/a |"]
    for arm in arms:
        entry = summary[arm]
        lines.append(f"| {label(arm)} | {_f(entry['clean_nll'], 4)} | {_nll_interval(entry.get('vs_all_tokens'))} | "
                     f"{_nll_interval(entry.get('vs_random'))} |")
    return lines


def _rounds(summary: dict) -> list[str]:
    """Self-evolving cleaning round by round: the reference check and what the round dropped, mean over seeds."""
    lines = []
    for arm, entry in summary.items():
        rows = entry.get("rounds")
        if not rows or not any(r.get("dropped") for r in rows):
            continue
        lines += ["", f"{label(arm)}, round by round (mean over seeds; reference and base NLL on clean samples no "
                  "arm trains on):", "", "| round | reference NLL | base NLL | rounds flagged | dropped | precision "
                  "| recall |", "|---|---|---|---|---|---|---|"]
        for index in sorted({r["round"] for r in rows}):
            group = [r for r in rows if r["round"] == index]

            def mean(key, group=group):
                values = [r[key] for r in group if r.get(key) is not None]
                return sum(values) / len(values) if values else None

            flagged = sum(1 for r in group if "beats_base" in r and not r["beats_base"])
            lines.append(f"| {index} | {_f(mean('reference_nll'))} | {_f(mean('base_nll'))} | {flagged} of "
                         f"{len(group)} | {_f(mean('dropped'), 0)} | {_f(mean('precision'))} | {_f(mean('recall'))} |")
    return lines


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"# {results['title']}", "",
             f"Machine: {env['machine']}; load average {env['load_average_start'][0]:.1f} at the start, "
             f"{env['load_average_end'][0]:.1f} at the end; {env['seconds'] / 60:.1f} minutes of wall time, "
             f"{env['cell_seconds'] / 60:.1f} minutes in the cells (base pretrained in "
             f"{results['plan']['base_info']['seconds']:.0f} s, then cached); seeds {results['plan']['seeds']} on base "
             f"seed {results['plan']['base'].get('seed', 0)}.", ""]
    if "refreshed" in results:
        refreshed = results["refreshed"]
        lines += [f"Tables recomputed from the stored cells on {refreshed['at']} (xtf_kernels "
                  f"{refreshed['xtf_kernels']}); the cells and the lines above are the run's own.", ""]
    criteria = results["criteria"]
    if results["intro"]:
        lines += [results["intro"], ""]
    if criteria is None:
        lines += _ladder_verdicts(results["ladder"])
    else:
        lines += _verdicts(criteria)
    for level, summary in results["summary"].items():
        cells = results["cells"][level]
        base = sum(c["base"]["exact_match"] for c in cells) / len(cells)
        reference = sum(c["reference"]["exact_match"] for c in cells) / len(cells)
        lines += ["", f"## {float(level):.0%} harmful noise", "",
                  f"Base model before fine-tuning: exact match {base:.3f}; Token Cleaning / RHO-1 reference "
                  f"{reference:.3f}; pool {cells[0]['data']['pool']} samples, {cells[0]['data']['response_tokens']} "
                  "response tokens.", "",
                  "| arm | drop | precision | recall | AUROC | AUPRC | exact match | vs all tokens [95%] | "
                  "vs matched random [95%] | perm. p | McNemar p | format | clean NLL | retention | "
                  "answer / eos / template dropped | whole types |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for arm, entry in summary.items():
            s = entry.get("selection")
            versus = entry.get("vs_all_tokens")
            protected = s["protected_drop_rate"] if s else None
            lines.append(
                f"| {label(arm)} | {_f(s['drop_rate'] if s else 0.0)} | {_f(s['harmful']['precision'] if s else None)}"
                f" | {_f(s['harmful']['recall'] if s else None)} | {_f(s['harmful']['auroc'] if s else None, 2)} | "
                f"{_f(s['harmful']['auprc'] if s else None, 2)} | {_f(entry['exact_match'])} | {_interval(versus)} | "
                f"{_interval(entry.get('vs_random'))} | {_f(versus['permutation_p'] if versus else None)} | "
                f"{_f(versus['mcnemar']['p'] if versus else None)} | {_f(entry['format'], 2)} | "
                f"{_f(entry['clean_nll'])} | {_f(entry['retention'], 2)} | "
                + (f"{protected['answer']:.2f} / {protected['eos']:.2f} / {protected['template']:.2f}" if s else "-")
                + f" | {_f(s['whole_types'], 1) if s else '-'} |")
        ladder = [arm for arm, entry in summary.items() if "vs_preset" in entry]
        if ladder:
            lines += ["", "Each rung against the configuration it changes (the paper preset for \"paper + ...\" "
                      "and \"guarded\"; guarded for \"guarded + rates\" and \"guarded without KN\"; guarded + "
                      "rates for the second round's rungs; Token Cleaning as published for its defaults; the "
                      "library's defaults for RI's scores; the trusted set then all tokens for self-evolving "
                      "cleaning with a trusted part): exact match difference per seed [95%], permutation p, drop "
                      "rate and precision against its:", "",
                      "| rung | vs its preset [95%] | perm. p | drop | preset's drop | precision "
                      "| preset's precision |",
                      "|---|---|---|---|---|---|---|"]
            for arm in ladder:
                versus, s = summary[arm]["vs_preset"], summary[arm]["selection"]
                preset = summary[versus["against"]]["selection"]
                lines.append(f"| {label(arm)} | {_interval(versus)} | {_f(versus['permutation_p'])} | "
                             f"{_f(s['drop_rate'])} | {_f(preset['drop_rate'])} | {_f(s['harmful']['precision'])} | "
                             f"{_f(preset['harmful']['precision'])} |")
        lines += _rounds(summary)
        lines += _clean_nll(summary)
        kinds = [arm for arm, entry in summary.items() if entry.get("selection")]
        if kinds:
            names = list(summary[kinds[0]]["selection"]["by_kind"])
            lines += ["", "AUROC (recall) per harmful kind; boilerplate drop rate:", "",
                      "| arm | " + " | ".join(names) + " | boilerplate dropped |", "|---" * (len(names) + 2) + "|"]
            for arm in kinds:
                s = summary[arm]["selection"]
                lines.append(f"| {label(arm)} | " + " | ".join(
                    f"{_f(s['by_kind'][k]['auroc'], 2)} ({_f(s['by_kind'][k]['recall'], 2)})" for k in names)
                    + f" | {_f(s['boilerplate_drop_rate'], 2)} |")
    return "\n".join(lines) + "\n"


def figure_png(results: dict) -> bytes:
    """Per noise level: exact match minus all tokens per arm with its 95% per-seed interval."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    levels = list(results["summary"])
    fig, axes = plt.subplots(1, len(levels), figsize=(6 * len(levels), 0.35 * max(
        len(results["summary"][lv]) for lv in levels) + 1.5), squeeze=False)
    for ax, level in zip(axes[0], levels):
        summary = results["summary"][level]
        arms = [a for a in summary if a != "all_tokens"]
        means = [summary[a]["vs_all_tokens"]["seeds"]["mean"] for a in arms]
        lows = [m - summary[a]["vs_all_tokens"]["seeds"]["low"] for a, m in zip(arms, means)]
        highs = [summary[a]["vs_all_tokens"]["seeds"]["high"] - m for a, m in zip(arms, means)]
        for y, (arm, mean, low, high) in enumerate(zip(arms, means, lows, highs)):
            colour = "#999999" if arm.startswith("random:") else "#2a9d8f" if arm == "oracle" else "#e76f51"
            ax.errorbar([mean], [y], xerr=[[low], [high]], fmt="o", color=colour, capsize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(arms)), [label(a) for a in arms], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{float(level):.0%} noise: exact match minus all tokens (95% over seeds)", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_results(results: dict, out_dir: str) -> None:
    atomic_write_text(os.path.join(out_dir, "miniature.json"), json.dumps(results, indent=1))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(csv_rows(results))
    atomic_write_text(os.path.join(out_dir, "miniature.csv"), buffer.getvalue())
    atomic_write_text(os.path.join(out_dir, "miniature.md"), markdown(results))
    atomic_write_bytes(os.path.join(out_dir, "miniature.png"), figure_png(results))
