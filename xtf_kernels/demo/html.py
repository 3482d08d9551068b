"""``report.html`` of ``xtf demo``: one self-contained page (plots embedded as base64 PNG, no external file).

Sections: the findings; a table per method (kept tokens, precision / recall of the dropped tokens against
the known noise, exact match, losses, speed); XTF per rule and the overlap of its rules; the loss-memory
comparison; loss curves; score histograms of clean and corrupted tokens with the thresholds that decide
the rules; training samples token by token with the dropped tokens coloured by rule (rendered by
:func:`xtf_kernels.pipeline.report.render_samples_html`, corrupted tokens underlined). matplotlib is
imported here only, lazily.
"""

from __future__ import annotations

import base64
import html
import io
import json

import torch

from ..pipeline.report import RULE_COLOURS
from .summary import METHOD_LABELS

METHOD_COLOURS = {"all_tokens": "#6c757d", "xtf": "#e76f51", "token_cleaning": "#2a9d8f"}
SCORE_TITLES = {
    ("xtf", "ri"): "XTF RI: attention received (low = noise)",
    ("xtf", "kn"): "XTF KN: 1 - p(token) (low = already known)",
    ("xtf", "tr"): "XTF TR: task relevance of the token id",
    ("token_cleaning", "influence"): "Token Cleaning: log p_ref - log p_base (low = dropped)",
}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; } td, th { border: 1px solid #ccc; padding: 4px 8px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } th { background: #f4f4f4; }
img { max-width: 100%; } .findings li { margin: 0.3em 0; } code { font-size: 0.9em; }
.sample { margin: 0.7em 0; line-height: 1.9; font-family: monospace; }
.head { font-family: system-ui, sans-serif; font-size: 0.85em; color: #555; }
.tok { padding: 1px 2px; border-radius: 3px; } .ctx { color: #999; }
.noise { text-decoration: underline wavy #d62828; }
.legend span { padding: 2px 8px; margin-right: 8px; border-radius: 3px; }
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


def loss_curves_png(methods: dict) -> str:
    """Left: training loss per step (moving average over 8 steps); right: held-out loss at the eval steps (log
    scale)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for key, label in METHOD_LABELS.items():
        losses = torch.tensor(methods[key]["loss_curve"], dtype=torch.float64)
        window = min(8, losses.numel())
        smooth = losses.unfold(0, window, 1).mean(1)
        left.plot(range(window, losses.numel() + 1), smooth.tolist(), label=label, color=METHOD_COLOURS[key])
        right.plot(methods[key]["eval_steps"], methods[key]["heldout_loss_curve"], marker="o", markersize=3,
                   label=label, color=METHOD_COLOURS[key])
    left.set_title("training loss (over each run's kept tokens)")
    right.set_title("held-out loss (every response token, clean; log scale)")
    right.set_yscale("log")  # a run that diverges would otherwise flatten the others
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def score_histograms_png(panels: list[tuple[str, torch.Tensor, torch.Tensor, list[float]]]) -> str:
    """A grid of panels, one per (title, clean values, corrupted values, thresholds): both distributions as
    densities, the thresholds as dashed lines."""
    plt = _pyplot()
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, clean, noisy, lines) in zip(axes.flat, panels):
        values = torch.cat([clean, noisy]).double()
        low, high = (float(values.min()), float(values.max())) if values.numel() else (0.0, 1.0)
        edges = torch.linspace(low, high if high > low else low + 1.0, 41).tolist()
        for data, label, colour in ((clean, "clean", "#8d99ae"), (noisy, "corrupted", "#d62828")):
            if data.numel():
                ax.hist(data.double().numpy(), bins=edges, density=True, histtype="stepfilled", alpha=0.45,
                        color=colour, label=f"{label} ({data.numel():,})")
        for value in lines:
            ax.axvline(value, color="black", linestyle="--", linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("score")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _num(x, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _methods_table(report: dict) -> str:
    rows = []
    for key, label in METHOD_LABELS.items():
        m = report["methods"][key]
        rows.append(
            f"<tr><td>{label}</td><td class=num>{m['kept_tokens']:,}</td><td class=num>{_pct(m['kept_fraction'])}</td>"
            f"<td class=num>{_pct(m['precision'])}</td><td class=num>{_pct(m['recall'])}</td>"
            f"<td class=num>{_num(m['f1'], '.3f')}</td><td class=num>{_pct(m['exact_match'])}</td>"
            f"<td class=num>{m['heldout_loss']:.3f}</td><td class=num>{m['final_train_loss']:.3f}</td>"
            f"<td class=num>{m['tokens_per_second']:,.0f}</td></tr>"
        )
    base = report["base"]
    rows.append(f"<tr><td>base model (not fine-tuned)</td><td></td><td></td><td></td><td></td><td></td>"
                f"<td class=num>{_pct(base['exact_match'])}</td><td class=num>{base['heldout_loss']:.3f}</td>"
                "<td></td><td></td></tr>")
    return ("<table><tr><th>method</th><th>kept tokens</th><th>kept</th><th>precision of dropped</th>"
            "<th>recall of corrupted</th><th>F1</th><th>held-out exact match</th><th>held-out loss</th>"
            "<th>final train loss</th><th>train tokens/s</th></tr>" + "".join(rows) + "</table>")


def _rules_table(report: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(rule)}</td><td class=num>{r['dropped']:,}</td><td class=num>{_pct(r['fraction'])}</td>"
        f"<td class=num>{r['only_this_rule']:,}</td><td class=num>{_pct(r['precision'])}</td>"
        f"<td class=num>{_pct(r['recall'])}</td></tr>"
        for rule, r in report["methods"]["xtf"]["rules"].items()
    )
    overlap = "".join(
        f"<tr><td>{html.escape(pair)}</td><td class=num>{o['both']:,}</td><td class=num>{_pct(o['jaccard'])}</td>"
        f"<td class=num>{_pct(o['of_smaller'])}</td></tr>"
        for pair, o in report["xtf_overlap"].items()
    )
    return ("<table><tr><th>rule</th><th>dropped</th><th>of response tokens</th><th>only by this rule</th>"
            f"<th>precision</th><th>recall</th></tr>{rows}</table>"
            "<table><tr><th>rules</th><th>dropped by both</th><th>Jaccard</th><th>of the smaller set</th></tr>"
            f"{overlap}</table>")


def _memory_table(report: dict) -> str:
    memory = report["memory"]
    rows = []
    for name in ("fused", "materialised"):
        side = memory[name]
        mib = (lambda b: "n/a" if b is None else f"{b / 2**20:,.0f} MiB")
        rows.append(
            f"<tr><td>{name} ({html.escape(side['provider'])})</td><td>{html.escape(side['status'])}</td>"
            f"<td class=num>{mib(side['peak_bytes'])}</td><td class=num>{mib(side['extra_bytes'])}</td>"
            f"<td class=num>{_num(side['ms'], ',.1f')}</td><td class=num>{_num(side['tokens_per_second'], ',.0f')}"
            f"</td><td>{html.escape(side['reason'])}</td></tr>"
        )
    return (f"<p>{memory['tokens']:,} tokens x hidden {memory['hidden']} x vocabulary {memory['vocab']:,}, "
            f"{memory['dtype']}, forward + backward, on {html.escape(memory['device'])}; peak memory by "
            f"{html.escape(memory['method'])}.</p><table><tr><th>loss</th><th>status</th><th>peak</th>"
            "<th>over the inputs</th><th>ms / step</th><th>tokens/s</th><th>notes</th></tr>"
            + "".join(rows) + "</table>")


def build_page(report: dict, score_panels: list, highlighted: dict[str, tuple[tuple[str, ...], str]]) -> str:
    """The HTML page.

    Args:
        report: the validated report (see :mod:`.report`).
        score_panels: (title, clean values, corrupted values, thresholds) per score histogram.
        highlighted: method key -> (its rule names, HTML of its highlighted samples).
    """
    config = report["config"]
    findings = "".join(f"<li>{html.escape(f)}</li>" for f in report["verdict"]["findings"])
    links = " ".join(f'<a href="{html.escape(path)}">{METHOD_LABELS[key]}</a>'
                     for key, path in report["files"]["method_reports"].items())
    sections = []
    for key, (rules, fragment) in highlighted.items():
        legend = " ".join(f'<span style="background:{RULE_COLOURS[i % len(RULE_COLOURS)]}">{html.escape(r)}</span>'
                          for i, r in enumerate(rules))
        sections.append(f"<h3>{METHOD_LABELS[key]}</h3><p class=legend>{legend} "
                        "<span class=noise>corrupted (ground truth)</span> grey: prompt. Hover a token for its "
                        f"scores.</p>{fragment}")
    env = report["environment"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>xtf demo report</title>
<style>{_CSS}</style></head><body>
<h1>xtf demo: fine-tuning on all tokens, XTF-filtered and Token-Cleaning-filtered</h1>
<p>Preset <b>{html.escape(config['name'])}</b>, seed {config['seed']}, on {html.escape(env['device'])}
(xtf_kernels {html.escape(env['xtf_kernels'])}, torch {html.escape(env['torch'])}, transformers
{html.escape(env['transformers'])}). A {html.escape(report['model']['arch'])} model with
{report['model']['parameters']:,} parameters, pretrained on {report['data']['pretrain_samples']:,} clean problems,
then fine-tuned {config['finetune_steps']} steps three ways on {report['data']['train_samples']:,} noisy samples;
exact match on {report['data']['heldout_problems']} held-out problems. Each method's own explainability page: {links}.
</p>
<h2>Findings</h2><ul class=findings>{findings}</ul>
<h2>Methods</h2>{_methods_table(report)}
<h2>XTF per rule</h2>{_rules_table(report)}
<h2>Loss memory: fused against materialised logits</h2>{_memory_table(report)}
<h2>Loss curves</h2><img alt="loss curves" src="{loss_curves_png(report['methods'])}">
<h2>Scores of clean and corrupted tokens</h2><p>Densities over the training pool's response tokens; dashed
lines: the thresholds deciding a rule (XTF's RI fence is per sample and has none).</p>
<img alt="score histograms" src="{score_histograms_png(score_panels)}">
<h2>Training samples, dropped tokens by rule</h2>{''.join(sections)}
<h2>Configuration</h2><pre>{html.escape(json.dumps(config, indent=1))}</pre>
</body></html>
"""
