"""``report.html`` of ``xtf demo``: one self-contained page (plots embedded as base64 PNG, no external file).

Sections: the findings; a row per arm (what it dropped, how well that matches the known noise, exact match
against all tokens and against the matched random drop with 95% intervals, format, clean NLL, retention);
what each arm dropped by noise kind and of the protected tokens; the exact-match differences as a plot; the
loss-memory comparison; training samples token by token with each filter's drops shaded and the harmful
tokens underlined. matplotlib is imported here only, lazily.
"""

from __future__ import annotations

import base64
import html
import io
import json

from ..datasets.miniature import KIND_CODE
from ..datasets.miniature import NOISE_KINDS

SHOWN_ARMS = ("xtf_paper", "xtf_safe", "tc_fixed", "rho1")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; } td, th { border: 1px solid #ccc; padding: 4px 8px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } th { background: #f4f4f4; }
img { max-width: 100%; } .findings li { margin: 0.3em 0; } code { font-size: 0.9em; }
.sample { margin: 0.7em 0; line-height: 1.9; font-family: monospace; }
.head { font-family: system-ui, sans-serif; font-size: 0.85em; color: #555; }
.tok { padding: 1px 0; } .drop { background: #f4a261; } .noise { text-decoration: underline wavy #d62828; }
.boiler { color: #2a9d8f; }
"""


def _png(fig) -> str:
    """The figure as a ``data:`` URI (and closed)."""
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    return plt


def differences_png(arms: dict) -> str:
    """Exact match minus all tokens (left) and minus the matched random drop (right), 95% intervals."""
    plt = _pyplot()
    trained = [a for a, e in arms.items() if e["vs_all_tokens"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.4 * max(1, len(trained)) + 1.4))
    for ax, key, title in zip(axes, ("vs_all_tokens", "vs_random"), ("minus all tokens", "minus matched random")):
        rows = [a for a in trained if arms[a][key] is not None]
        for y, arm in enumerate(rows):
            entry = arms[arm][key]
            colour = "#999999" if arm.startswith("random:") else "#2a9d8f" if arm == "oracle" else "#e76f51"
            ax.errorbar([100 * entry["mean"]], [y], xerr=[[100 * (entry["mean"] - entry["low"])],
                                                          [100 * (entry["high"] - entry["mean"])]],
                        fmt="o", color=colour, capsize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(rows)), [arms[a]["label"] for a in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"exact match {title} (points, 95%)", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _points(entry) -> str:
    if entry is None:
        return ""
    return (f"{100 * entry['mean']:+.1f} [{100 * entry['low']:+.1f}, {100 * entry['high']:+.1f}]<br>"
            f"<small>perm. p {entry['permutation_p']:.3f}, McNemar p {entry['mcnemar_p']:.3f}</small>")


def _nats(entry: dict | None, against: str) -> str:
    """The clean-NLL difference against ``against`` with its interval, on its own line; "" without one."""
    if entry is None:
        return ""
    nll = entry["clean_nll"]
    return f"<br><small>vs {against} {nll['mean']:+.3f} [{nll['low']:+.3f}, {nll['high']:+.3f}]</small>"


def _arms_table(report: dict) -> str:
    rows = []
    for entry in report["arms"].values():
        s, e = entry["selection"], entry["evaluation"]
        auroc = "" if s is None or s["auroc"] is None else f"{s['auroc']:.2f}"
        cells = [html.escape(entry["label"]), _pct(s["drop_rate"] if s else 0.0), _pct(s["precision"]) if s else "",
                 _pct(s["recall"]) if s else "", auroc]
        if e is None:
            cells += ["scored only"] + [""] * 5
        else:
            cells += [_pct(e["exact_match"]), _points(entry["vs_all_tokens"]), _points(entry["vs_random"]),
                      _pct(e["format"]), f"{e['clean_nll']:.3f}" + _nats(entry["vs_all_tokens"], "all")
                      + _nats(entry["vs_random"], "random"), _pct(e["retention"])]
        rows.append("<tr>" + "".join(f"<td class=num>{c}</td>" for c in cells) + "</tr>")
    base = report["base"]
    rows.append(f"<tr><td>base model (not fine-tuned)</td><td></td><td></td><td></td><td></td>"
                f"<td class=num>{_pct(base['exact_match'])}</td><td></td><td></td><td class=num>"
                f"{_pct(base['format'])}</td><td class=num>{base['clean_nll']:.3f}</td>"
                f"<td class=num>{_pct(base['retention'])}</td></tr>")
    return ("<table><tr><th>arm</th><th>dropped</th><th>precision</th><th>recall</th><th>AUROC</th>"
            "<th>exact match</th><th>vs all tokens (points, 95%)</th><th>vs matched random</th><th>format</th>"
            "<th>clean NLL (vs, nats, 95%)</th><th>retention</th></tr>" + "".join(rows) + "</table>")


def _kinds_table(report: dict) -> str:
    rows = []
    for entry in report["arms"].values():
        s = entry["selection"]
        if s is None:
            continue
        kinds = "".join(f"<td class=num>{_pct(s['by_kind'][k]['recall'])} / "
                        f"{'n/a' if s['by_kind'][k]['auroc'] is None else format(s['by_kind'][k]['auroc'], '.2f')}"
                        "</td>" for k in NOISE_KINDS)
        protected = s["protected_dropped"]
        examples = html.escape(", ".join(s["whole_type_examples"][:5]))
        rows.append(f"<tr><td>{html.escape(entry['label'])}</td>{kinds}<td class=num>"
                    f"{_pct(s['boilerplate_dropped'])}</td><td class=num>{_pct(protected['answer'])}</td>"
                    f"<td class=num>{_pct(protected['eos'])}</td><td class=num>{_pct(protected['template'])}</td>"
                    f"<td class=num>{s['whole_types']}</td><td><code>{examples}</code></td></tr>")
    header = "".join(f"<th>{k} dropped / AUROC</th>" for k in NOISE_KINDS)
    return (f"<table><tr><th>arm</th>{header}<th>boilerplate dropped</th><th>answer digits dropped</th>"
            "<th>eos dropped</th><th>template dropped</th><th>whole types</th><th>e.g.</th></tr>"
            + "".join(rows) + "</table>")


def samples_html(artifacts, tokenizer, count: int) -> str:
    """The first ``count`` noisy training samples' responses, once per shown arm: dropped tokens shaded,
    harmful tokens underlined, boilerplate in green."""
    noisy = [i for i, s in enumerate(artifacts.samples) if bool((s.noise_mask & s.response_mask).any())][:count]
    parts = []
    for index in noisy:
        sample, kinds = artifacts.samples[index], artifacts.kinds[index]
        for arm in SHOWN_ARMS:
            if arm not in artifacts.dropped:
                continue
            dropped = artifacts.dropped[arm][index]
            spans = []
            for position in sample.response_mask.nonzero().flatten().tolist():
                classes = ["tok"]
                if bool(dropped[position]):
                    classes.append("drop")
                if int(kinds[position]) in {KIND_CODE[k] for k in NOISE_KINDS}:
                    classes.append("noise")
                if int(kinds[position]) == KIND_CODE["boilerplate"]:
                    classes.append("boiler")
                text = tokenizer.decode([int(sample.input_ids[position])], skip_special_tokens=False)
                spans.append(f'<span class="{" ".join(classes)}">{html.escape(text)}</span>')
            parts.append(f'<div class="sample"><span class="head">sample {index}, {html.escape(arm)}:</span> '
                         + "".join(spans) + "</div>")
    return "".join(parts)


def _memory(report: dict) -> str:
    memory = report["memory"]
    rows = []
    for name in ("fused", "materialised"):
        side = memory[name]
        extra = "n/a" if side["extra_bytes"] is None else f"{side['extra_bytes'] / 2**20:,.0f} MiB"
        ms = "n/a" if side["ms"] is None else f"{side['ms']:,.0f} ms"
        rows.append(f"<tr><td>{name} ({html.escape(side['provider'])})</td><td>{html.escape(side['status'])}</td>"
                    f"<td class=num>{extra}</td><td class=num>{ms}</td></tr>")
    return (f"<p>{memory['tokens']} x {memory['hidden']} x {memory['vocab']} {memory['dtype']}, forward and "
            f"backward, {html.escape(memory['method'])}</p><table><tr><th>loss</th><th>status</th>"
            "<th>extra memory</th><th>time per step</th></tr>" + "".join(rows) + "</table>")


def build_page(report: dict, artifacts, tokenizer, *, highlighted: int) -> str:
    """The whole page for ``report`` (validated) and the cell's ``artifacts`` (pool, kinds, drops)."""
    findings = "".join(f"<li>{html.escape(f)}</li>" for f in report["verdict"]["findings"])
    config = html.escape(json.dumps(report["config"]))
    return (
        "<!DOCTYPE html><html><head><meta charset=utf-8><title>xtf demo report</title>"
        f"<style>{_CSS}</style></head><body><h1>xtf demo: token filtering on the miniature</h1>"
        f"<p>{html.escape(report['environment']['device'])}; base model of {report['model']['parameters']:,} "
        f"parameters pretrained on {report['model']['pretrain_tokens']:,} tokens; config <code>{config}</code></p>"
        f"<h2>Findings</h2><ul class=findings>{findings}</ul>"
        f"<h2>Arms</h2>{_arms_table(report)}"
        f'<img alt="exact-match differences" src="{differences_png(report["arms"])}">'
        f"<h2>What each arm dropped</h2>{_kinds_table(report)}"
        f"<h2>Loss memory</h2>{_memory(report)}"
        "<h2>Training samples</h2><p>Shaded: dropped by the arm; underlined: harmful noise; green: boilerplate.</p>"
        f"{samples_html(artifacts, tokenizer, highlighted)}</body></html>"
    )
