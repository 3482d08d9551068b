"""Draw results rows to a PNG: per case, median time and extra peak memory for every provider that ran.

matplotlib is an optional dependency (``pip install 'xtf_kernels[hf]'``); it is imported on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

from .._atomic import atomic_open
from .report import group_by_case
from .store import ResultRow


def latest_run(rows: list[ResultRow], device_type: str | None = None) -> list[ResultRow]:
    """The rows of the most recent run (by run id, which starts with its UTC time), optionally per device."""
    if device_type is not None:
        rows = [r for r in rows if r.device_type == device_type]
    if not rows:
        return []
    last = max(r.run_id for r in rows)
    return [r for r in rows if r.run_id == last]


def plot_rows(rows: list[ResultRow], png_path: str | os.PathLike) -> Path:
    """Write a PNG of ``rows`` (typically one run) to ``png_path``; returns the path."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_by_case(rows)
    if not groups:
        raise ValueError("no rows to plot")
    height = 1.2 + 0.45 * max(len(g) for g in groups.values()) * len(groups)
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, height), squeeze=False)
    for (case, group), (ax_time, ax_mem) in zip(groups.items(), axes):
        names = [r.provider for r in group]
        colors = ["tab:orange" if r.family == "xtf" else "tab:blue" for r in group]
        for ax, metric, unit in ((ax_time, "ms", "ms (median)"), (ax_mem, "extra_gib", "extra peak GiB")):
            values = [getattr(r, metric) if r.status == "ok" and getattr(r, metric) is not None else 0.0 for r in group]
            ax.barh(names, values, color=colors)
            for y, (row, value) in enumerate(zip(group, values)):
                shown = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
                note = f" {shown}" if row.status == "ok" and value else f" {row.status}"
                ax.text(value, y, note, va="center", fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel(unit, fontsize=8)
            ax.tick_params(labelsize=7)
        ax_time.set_title(f"{case.label} ({group[0].device})", fontsize=8, loc="left")
    fig.tight_layout()
    path = Path(png_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as out:
        fig.savefig(out, dpi=110, format="png")
    plt.close(fig)
    return path
