"""The side-by-side table: one block per case, one line per provider, ratios to the best peer.

"x best peer" is a provider's median time over the fastest peer's on the same case (below 1 is faster
than every peer); "x peer mem" is its extra memory over the lowest peer's extra memory.
"""

from __future__ import annotations

from .cases import Case
from .store import ResultRow


def group_by_case(rows: list[ResultRow]) -> dict[Case, list[ResultRow]]:
    """Rows keyed by their case, in first-seen order."""
    groups: dict[Case, list[ResultRow]] = {}
    for row in rows:
        groups.setdefault(row.case, []).append(row)
    return groups


def best_peer(rows: list[ResultRow], metric: str) -> float | None:
    """The lowest ``metric`` ("ms" or "extra_gib") among the peers that ran, None if none did."""
    values = [getattr(r, metric) for r in rows if r.family == "peer" and r.status == "ok"]
    values = [v for v in values if v is not None and v > 0]
    return min(values) if values else None


def _num(value: float | None, width: int, decimals: int) -> str:
    return ("-" if value is None else f"{value:.{decimals}f}").rjust(width)


def _sig(value: float | None, width: int) -> str:
    """Three significant digits (CPU rates are fractions of a TFLOP/s, GPU rates hundreds)."""
    return ("-" if value is None else f"{value:.3g}").rjust(width)


def format_table(rows: list[ResultRow]) -> str:
    """Plain-text table of ``rows`` (one run), grouped by case in first-seen order."""
    header = (
        f"{'provider':<20} {'ms':>10} {'TFLOP/s':>8} {'peak GiB':>9} {'extra GiB':>9} "
        f"{'x best peer':>11} {'x peer mem':>10} {'load':>5}  note"
    )
    lines = []
    for case, group in group_by_case(rows).items():
        kept = f", {case.kept_tokens} tokens kept" if case.keep < 1 else ""
        lines.append(f"== {case.label}  (floor {case.flops:.3g} FLOP{kept}; {group[0].device})")
        lines.append(header)
        fastest, leanest = best_peer(group, "ms"), best_peer(group, "extra_gib")
        for row in group:
            if row.status != "ok":
                lines.append(f"{row.provider:<20} {row.status}: {row.reason}")
                continue
            time_ratio = row.ms / fastest if fastest else None
            mem_ratio = row.extra_gib / leanest if leanest and row.extra_gib is not None else None
            lines.append(
                f"{row.provider:<20} {row.ms:>10.1f} {_sig(row.tflops, 8)} {_num(row.peak_gib, 9, 3)} "
                f"{_num(row.extra_gib, 9, 3)} {_num(time_ratio, 11, 2)} {_num(mem_ratio, 10, 2)} "
                f"{_num(row.load_1m, 5, 1)}  {row.path}"
                + (f"; {row.reason}" if row.reason else "")
            )
        lines.append("")
    return "\n".join(lines)
