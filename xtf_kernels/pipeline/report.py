"""The explainability report of a scoring run: which rule dropped which tokens, and why.

:func:`write_report` writes into a folder:
- ``report.json``: :func:`rule_statistics` (counts and fractions per rule, tokens only one rule dropped,
  pairwise overlaps of the rules' dropped sets, the union) and, when the data carries ground-truth
  ``noise_mask``, :func:`precision_recall` per rule; :func:`drop_cap`, the safeguards' global cap against
  the fraction the masks drop (the total the run checked);
- ``histograms.png``: one histogram per score over the scored tokens, the tokens its rule dropped stacked on the others,
  with the thresholds that decide them (KN: PCP = ``kn_pcp_max``; TR: the Multi-Otsu thresholds; Token
  Cleaning: the pool-wide top-k threshold; RI's fence is per sample, so it has no single line);
- ``report.html``: the tables and the figure, and the first samples rendered token by token with the
  dropped tokens highlighted by rule (hover a token for its scores), openable in any browser;
- with the data: the per-rule diagnostics of :func:`xtf_kernels.methods.diagnostics.rule_diagnostics` (types a
  rule drops at every occurrence and their share of tokens, its most-dropped types, special tokens and digits
  dropped, drop rate by relative position in 5 bins, what the safeguards kept, warnings), in both files.
matplotlib is imported only here, lazily.
"""

from __future__ import annotations

import html
import itertools
import json
import math
import os

import torch

from .._atomic import atomic_write_bytes
from ..datasets.samples import IGNORE_INDEX
from ..methods.diagnostics import rule_diagnostics
from ..methods.safeguards import special_ids_of
from .result import ScoreResult
from .result import safeguards_of

RULE_COLOURS = ("#f4a261", "#2a9d8f", "#8ecae6", "#e76f51", "#b5838d", "#90be6d")


def rule_statistics(result: ScoreResult) -> dict:
    """Token counts per rule, their overlaps and the union, over every scored token."""
    rules = result.rule_names
    scored = dropped = 0
    fired = [0] * len(rules)
    only = [0] * len(rules)
    pairs = {pair: 0 for pair in itertools.combinations(range(len(rules)), 2)}
    every = 0
    for shard in result.shards():
        valid = torch.zeros_like(shard.dropped_by, dtype=torch.bool)
        for values in shard.scores.values():
            valid |= ~torch.isnan(values)
        flags = shard.dropped_by.long()
        scored += int(valid.sum())
        dropped += int((flags != 0).sum())
        bits = [(flags >> i) & 1 == 1 for i in range(len(rules))]
        for i, bit in enumerate(bits):
            fired[i] += int(bit.sum())
            only[i] += int((flags == (1 << i)).sum())
        for (i, j) in pairs:
            pairs[(i, j)] += int((bits[i] & bits[j]).sum())
        if rules:
            every += int((flags == (1 << len(rules)) - 1).sum())
    fraction = (lambda n: n / scored) if scored else (lambda n: 0.0)
    overlap = {}
    for (i, j), both in pairs.items():
        either = fired[i] + fired[j] - both
        overlap[f"{rules[i]}&{rules[j]}"] = {
            "both": both,
            "jaccard": both / either if either else 0.0,
            "of_smaller": both / min(fired[i], fired[j]) if min(fired[i], fired[j]) else 0.0,
        }
    return {
        "method": result.method, "num_samples": result.num_samples, "num_tokens": result.num_tokens,
        "scored_tokens": scored, "dropped_tokens": dropped, "dropped_fraction": fraction(dropped),
        "rules": {rule: {"fired": fired[i], "fraction": fraction(fired[i]), "only_this_rule": only[i]}
                  for i, rule in enumerate(rules)},
        "overlap": overlap, "all_rules": every,
    }


def drop_cap(result: ScoreResult) -> dict | None:
    """The global cap the run was checked against: {"max_total_drop", "on_exceed", "dropped", "scored",
    "fraction", "exceeded"} from the manifest's ``drop_totals`` (the whole dataset, as a filter applies the
    masks); None when the config sets no cap or the results predate the record."""
    safeguards = safeguards_of(result.manifest)
    totals = result.manifest.get("drop_totals")
    if safeguards is None or safeguards.max_total_drop is None or totals is None:
        return None
    fraction = totals["dropped"] / totals["scored"] if totals["scored"] else 0.0
    return {"max_total_drop": safeguards.max_total_drop, "on_exceed": safeguards.on_exceed,
            "dropped": totals["dropped"], "scored": totals["scored"], "fraction": fraction,
            "exceeded": fraction > safeguards.max_total_drop}


def precision_recall(result: ScoreResult, data, tokenizer=None, *, max_length: int | None = None) -> dict | None:
    """Precision / recall / F1 of each rule's and the union's dropped tokens against ``noise_mask``.

    Over the scored tokens; None if the samples carry no ``noise_mask``. The data's fingerprint is checked.
    """
    source = result.check_data(data, tokenizer, max_length=max_length)
    rules = result.rule_names
    counts = {name: [0, 0, 0] for name in (*rules, "union")}  # true positives, predicted, actual
    for sample, scored in zip(source, result.iter_samples()):
        if sample.noise_mask is None:
            return None
        valid = torch.zeros(len(sample), dtype=torch.bool)
        for values in scored.scores.values():
            valid |= ~torch.isnan(values)
        truth = sample.noise_mask & valid
        for name in counts:
            predicted = (scored.dropped if name == "union" else scored.fired(name)) & valid
            counts[name][0] += int((predicted & truth).sum())
            counts[name][1] += int(predicted.sum())
            counts[name][2] += int(truth.sum())
    out = {}
    for name, (tp, predicted, actual) in counts.items():
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "dropped": predicted, "noisy": actual}
    return out


def thresholds(result: ScoreResult) -> dict[str, list[float]]:
    """Score name -> the thresholds that decide its rule, on the score's scale."""
    out: dict[str, list[float]] = {}
    if result.method == "xtf":
        # the target-rate modes decide per sample (RI, KN) or per id (TR): no single line on the histogram
        if "kn" in result.score_names and result.config.get("kn_threshold", "absolute") == "absolute":
            out["kn"] = [1.0 - float(result.config["kn_pcp_max"])]
        state = result.state()
        if "tr" in result.score_names and "tr_thresholds" in state and state["tr_thresholds"].numel():
            out["tr"] = [float(t) for t in state["tr_thresholds"]]
    topk = result.manifest["global_topk"]
    if topk is not None and topk["value"] is not None:
        out[topk["score"]] = [float(topk["value"])]
    return out


def rule_of_score(result: ScoreResult, score: str) -> str | None:
    """The rule a score decides: XTF's "ri" -> "RI" etc., the pool-wide top k's score -> its rule, or the only
    rule; None if it cannot be told."""
    if score.upper() in result.rule_names:
        return score.upper()
    topk = result.manifest["global_topk"]
    if topk is not None and topk["score"] == score:
        return topk["rule"]
    return result.rule_names[0] if len(result.rule_names) == 1 else None


def score_histograms(result: ScoreResult, bins: int = 50) -> dict[str, dict]:
    """Score name -> {"edges", "kept", "dropped"}: histograms of the scored tokens (two passes over the shards);
    "dropped" counts the tokens the score's own rule dropped (:func:`rule_of_score`; any rule if unknown).
    The ``guard`` codes of the safeguards are not a score and get no histogram."""
    names = [name for name in result.score_names if name != "guard"]
    low = {name: math.inf for name in names}
    high = {name: -math.inf for name in names}
    for shard in result.shards():
        for name in names:
            values = shard.scores[name]
            finite = values[torch.isfinite(values)]
            if finite.numel():
                low[name] = min(low[name], float(finite.min()))
                high[name] = max(high[name], float(finite.max()))
    out = {}
    for name in names:
        if low[name] > high[name]:
            continue
        span = high[name] - low[name] or 1.0
        out[name] = {"edges": torch.linspace(low[name], low[name] + span, bins + 1).tolist(),
                     "kept": [0] * bins, "dropped": [0] * bins}
    bits = {}
    for name in out:
        rule = rule_of_score(result, name)
        bits[name] = 0xFF if rule is None else 1 << result.rule_names.index(rule)
    for shard in result.shards():
        for name, hist in out.items():
            dropped = (shard.dropped_by & bits[name]) != 0
            values = shard.scores[name]
            finite = torch.isfinite(values)
            low_edge, high_edge = hist["edges"][0], hist["edges"][-1]
            index = ((values - low_edge) / (high_edge - low_edge) * bins).floor().clamp(0, bins - 1).long()
            for key, mask in (("kept", finite & ~dropped), ("dropped", finite & dropped)):
                counts = torch.bincount(index[mask], minlength=bins)
                hist[key] = [a + int(b) for a, b in zip(hist[key], counts)]
    return out


def plot_histograms(histograms: dict[str, dict], lines: dict[str, list[float]], path: str) -> None:
    """One panel per score: kept and dropped tokens stacked, thresholds as dashed lines (PNG, atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    names = list(histograms)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4.2 * max(len(names), 1), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        hist = histograms[name]
        edges = hist["edges"]
        widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
        ax.bar(edges[:-1], hist["kept"], width=widths, align="edge", color="#8d99ae", label="others")
        ax.bar(edges[:-1], hist["dropped"], width=widths, align="edge", bottom=hist["kept"], color="#e63946",
               label="dropped by this rule")
        for value in lines.get(name, []):
            ax.axvline(value, color="black", linestyle="--", linewidth=1)
        ax.set_title(name)
        ax.set_xlabel("score")
        ax.set_ylabel("tokens")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _token_texts(ids: list[int], tokenizer) -> list[str]:
    if tokenizer is None:
        return [str(i) for i in ids]
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]
    return [tokenizer.decode([i]) for i in ids]


def render_samples_html(result: ScoreResult, data, tokenizer=None, *, max_samples: int = 50,
                        max_length: int | None = None) -> str:
    """HTML of the first ``max_samples`` samples, token by token, dropped tokens coloured by rule."""
    source = result.check_data(data, tokenizer, max_length=max_length)
    rules = result.rule_names
    parts = []
    for index, (sample, scored) in enumerate(zip(source, result.iter_samples())):
        if index >= max_samples:
            break
        ids = sample.input_ids.tolist()
        texts = _token_texts(ids, tokenizer)
        spans = []
        for t, text in enumerate(texts):
            flags = int(scored.dropped_by[t])
            fired = [rules[i] for i in range(len(rules)) if flags >> i & 1]
            score_text = ", ".join(
                f"{name}={float(values[t]):.4g}" for name, values in scored.scores.items() if not math.isnan(values[t])
            )
            title = "; ".join(filter(None, [("dropped by " + " + ".join(fired)) if fired else "", score_text]))
            classes = ["tok"]
            if sample.labels[t] == IGNORE_INDEX and not fired:
                classes.append("ctx")
            if sample.noise_mask is not None and bool(sample.noise_mask[t]):
                classes.append("noise")
            style = ""
            if fired:
                colours = [RULE_COLOURS[rules.index(r) % len(RULE_COLOURS)] for r in fired]
                style = (f"background:{colours[0]}" if len(colours) == 1 else
                         "background:linear-gradient(90deg," + ",".join(colours) + ")")
            spans.append(f'<span class="{" ".join(classes)}" style="{style}" title="{html.escape(title)}">'
                         f"{html.escape(text)}</span>")
        dropped = int(scored.dropped.sum())
        parts.append(f'<div class="sample"><div class="head">sample {index} &middot; {dropped} dropped</div>'
                     + " ".join(spans) + "</div>")
    return "\n".join(parts)


_CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 70em; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 4px 8px; }
.sample { margin: 0.8em 0; line-height: 1.9; font-family: monospace; }
.head { font-family: sans-serif; font-size: 0.85em; color: #555; }
.tok { padding: 1px 2px; border-radius: 3px; } .ctx { color: #999; }
.noise { text-decoration: underline wavy #d62828; }
.legend span { padding: 2px 8px; margin-right: 8px; border-radius: 3px; }
"""


def _cap_text(cap: dict | None) -> str:
    if cap is None:
        return ""
    verdict = "<b>EXCEEDED</b>" if cap["exceeded"] else "held"
    return (f" Global cap (max_total_drop) {cap['max_total_drop']:.2%}: {verdict} ({cap['fraction']:.2%} of the "
            f"whole dataset dropped; on_exceed={html.escape(cap['on_exceed'])}).")


def write_report(result: ScoreResult | str | os.PathLike, out_dir: str | os.PathLike | None = None, *, data=None,
                 tokenizer=None, max_length: int | None = None, max_samples: int = 50, bins: int = 50) -> dict:
    """Write report.json, histograms.png and report.html (see the module docstring) into ``out_dir``.

    Args:
        result: a :class:`ScoreResult` or its folder.
        out_dir: default the result's folder.
        data / tokenizer / max_length: the scored data (checked against the fingerprint); needed for the
            sample texts and the precision / recall against ``noise_mask``; without it only statistics and
            histograms are written.

    Returns:
        {"statistics": ..., "precision_recall": ... or None, "files": {"json", "png", "html"}}.
    """
    if not isinstance(result, ScoreResult):
        result = ScoreResult(result)
    out_dir = os.fspath(out_dir or result.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    source = None if data is None else result.check_data(data, tokenizer, max_length=max_length)
    statistics = rule_statistics(result)
    accuracy = None if source is None else precision_recall(result, source)
    lines = thresholds(result)
    histograms = score_histograms(result, bins)
    diagnostics = None
    if source is not None:
        special = special_ids_of(tokenizer) if tokenizer is not None else []
        diagnostics = rule_diagnostics(source, result.iter_samples(), tokenizer=tokenizer, special_ids=special)
    files = {"json": os.path.join(out_dir, "report.json"), "png": os.path.join(out_dir, "histograms.png"),
             "html": os.path.join(out_dir, "report.html")}
    cap = drop_cap(result)
    report = {"statistics": statistics, "precision_recall": accuracy, "thresholds": lines, "drop_cap": cap,
              "diagnostics": diagnostics, "config": result.config, "data_fingerprint": result.data_fingerprint}
    atomic_write_bytes(files["json"], json.dumps(report, indent=1).encode())
    plot_histograms(histograms, lines, files["png"])

    rules = result.rule_names
    legend = " ".join(f'<span style="background:{RULE_COLOURS[i % len(RULE_COLOURS)]}">{html.escape(r)}</span>'
                      for i, r in enumerate(rules))
    rows = "".join(
        f"<tr><td>{html.escape(r)}</td><td>{v['fired']}</td><td>{v['fraction']:.2%}</td><td>{v['only_this_rule']}"
        "</td></tr>" for r, v in statistics["rules"].items()
    )
    overlap_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['both']}</td><td>{v['jaccard']:.2%}</td><td>{v['of_smaller']:.2%}</td>"
        "</tr>" for k, v in statistics["overlap"].items()
    )
    accuracy_table = ""
    if accuracy:
        accuracy_rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td><td>{v['f1']:.3f}"
            "</td></tr>" for k, v in accuracy.items()
        )
        accuracy_table = ("<h2>Against the known noise</h2><table><tr><th>rule</th><th>precision</th><th>recall</th>"
                          f"<th>F1</th></tr>{accuracy_rows}</table>")
    samples_html = "" if source is None else render_samples_html(result, source, tokenizer, max_samples=max_samples)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>xtf report: {html.escape(result.method)}</title>
<style>{_CSS}</style></head><body>
<h1>Token filtering report: {html.escape(result.method)}</h1>
<p>{statistics['num_samples']} samples, {statistics['scored_tokens']} scored response tokens,
{statistics['dropped_tokens']} dropped ({statistics['dropped_fraction']:.2%}).{_cap_text(cap)} Config:
<code>{html.escape(json.dumps(result.config))}</code></p>
<h2>Per rule</h2><table><tr><th>rule</th><th>dropped</th><th>of scored</th><th>only this rule</th></tr>{rows}</table>
<h2>Overlap of the rules</h2><table><tr><th>rules</th><th>both</th><th>Jaccard</th><th>of the smaller set</th></tr>
{overlap_rows}</table><p>dropped by every rule: {statistics['all_rules']}</p>
{accuracy_table}
{_diagnostics_html(diagnostics)}
<h2>Score histograms</h2><img src="histograms.png" alt="score histograms">
<h2>Samples</h2><p class="legend">{legend} <span class="noise">known noise</span> (grey: prompt / not trained on;
hover a token for its scores)</p>
{samples_html}
</body></html>"""
    atomic_write_bytes(files["html"], page.encode())
    return {"statistics": statistics, "precision_recall": accuracy, "diagnostics": diagnostics, "files": files}


def _diagnostics_html(diagnostics: dict | None) -> str:
    """The diagnostics section: warnings, per-rule types, drop rate by position, safeguards."""
    if not diagnostics or not diagnostics["rules"]:
        return ""
    esc = html.escape
    warnings = "".join(f"<li>{esc(w)}</li>" for w in diagnostics["warnings"]) or "<li>none</li>"
    rows = []
    for rule, entry in diagnostics["rules"].items():
        always = ", ".join(f"{esc(t['token'])} ({t['occurrences']})" for t in entry["always_dropped_types"]) or "-"
        top = ", ".join(f"{esc(t['token'])} {t['dropped']}/{t['occurrences']}" for t in entry["top_types"]) or "-"
        rows.append(f"<tr><td>{esc(rule)}</td><td>{entry['dropped']}</td><td>{always}</td>"
                    f"<td>{entry['always_dropped_share']:.2%}</td><td>{top}</td><td>{entry['special_dropped']}</td>"
                    f"<td>{entry['digits_dropped']} / {entry['digit_tokens']}</td></tr>")
    positions = diagnostics["positions"]
    head = "".join(f"<th>{a:.0%}-{b:.0%}</th>" for a, b in positions["bins"])
    position_rows = "".join(
        f"<tr><td>{esc(rule)}</td>" + "".join(f"<td>{rate:.2%}</td>" for rate in rates) + "</tr>"
        for rule, rates in positions["drop_rate"].items()
    )
    guard = diagnostics["guard"]
    guard_text = ("" if guard is None else "<p>kept by the safeguards: " + ", ".join(
        f"{esc(name)} {count}" for name, count in guard.items() if name != "none") + "</p>")
    whole = diagnostics["whole_response"]
    return f"""<h2>Diagnostics by token type and position</h2><ul class="warnings">{warnings}</ul>
<table><tr><th>rule</th><th>dropped</th><th>types dropped at every occurrence (occurrences)</th>
<th>their share of tokens</th><th>most-dropped types (dropped / occurrences)</th><th>special tokens</th>
<th>digits</th></tr>{"".join(rows)}</table>
<p>Drop rate by relative position in the response:</p>
<table><tr><th>rule</th>{head}</tr>{position_rows}</table>{guard_text}
<p>samples with every scored token dropped: {whole['dropped']}; kept whole (all_dropped="keep"):
{whole['kept_whole']}</p>"""
