"""Error of estimate_tv against the closed form TV(N(m1, S), N(m2, S)) = 2 Phi(D / 2) - 1.

For each dimension d, Mahalanobis separation D, rows per set n and seed: draw a random SPD covariance S and
means exactly D apart, sample n rows of each Gaussian, estimate TV with the linear and the quadratic class
(default split: 70% train / 30% held out), and record |TV_hat - TV|, the signed error and whether the 95%
interval holds the true TV.

    python -m benchmarks.fidelity.gaussian_error            # full grid, about 3 min on one CPU core
    python -m benchmarks.fidelity.gaussian_error --quick    # smoke run

Writes results/gaussian_error.csv (one row per run), results/gaussian_error.json (means per cell and the
machine) and results/gaussian_error.png (mean |error| against n, one panel per dimension).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from tests.fidelity.reference import gaussian_pair
from tests.fidelity.reference import sample_gaussian
from tests.fidelity.reference import tv_equal_covariance
from xtf_kernels._atomic import atomic_open
from xtf_kernels.fidelity import estimate_tv

from ._common import machine
from ._common import parse_experiment_args
from ._common import write_json

FULL = {"dims": [2, 8, 32], "separations": [0.5, 1.0, 2.0, 4.0], "sizes": [250, 1000, 4000, 16000], "seeds": 20}
QUICK = {"dims": [2, 4], "separations": [1.0, 3.0], "sizes": [100, 400], "seeds": 2}
CLASSIFIERS = ("linear", "quadratic")


def run_grid(grid: dict) -> list[dict]:
    rows = []
    for dim in grid["dims"]:
        for separation in grid["separations"]:
            true_tv = tv_equal_covariance(separation)
            for n in grid["sizes"]:
                for seed in range(grid["seeds"]):
                    mean_p, mean_q, covariance = gaussian_pair(dim, separation, seed)
                    rng = np.random.default_rng(10_000 + seed)
                    p = sample_gaussian(mean_p, covariance, n, rng)
                    q = sample_gaussian(mean_q, covariance, n, rng)
                    for classifier in CLASSIFIERS:
                        start = time.perf_counter()
                        estimate = estimate_tv(p, q, classifier=classifier, seed=seed)
                        rows.append({
                            "dim": dim,
                            "separation": separation,
                            "n_per_set": n,
                            "seed": seed,
                            "classifier": classifier,
                            "true_tv": true_tv,
                            "tv_hat": estimate.tv,
                            "lower": estimate.lower,
                            "upper": estimate.upper,
                            "abs_error": abs(estimate.tv - true_tv),
                            "signed_error": estimate.tv - true_tv,
                            "covered": estimate.lower <= true_tv <= estimate.upper,
                            "seconds": time.perf_counter() - start,
                        })
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    cells = {}
    for row in rows:
        cells.setdefault((row["classifier"], row["dim"], row["separation"], row["n_per_set"]), []).append(row)
    summary = []
    for (classifier, dim, separation, n), group in sorted(cells.items()):
        summary.append({
            "classifier": classifier,
            "dim": dim,
            "separation": separation,
            "n_per_set": n,
            "true_tv": group[0]["true_tv"],
            "mean_tv_hat": float(np.mean([r["tv_hat"] for r in group])),
            "mean_abs_error": float(np.mean([r["abs_error"] for r in group])),
            "mean_signed_error": float(np.mean([r["signed_error"] for r in group])),
            "coverage": float(np.mean([r["covered"] for r in group])),
            "runs": len(group),
        })
    return summary


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({row["dim"] for row in summary})
    separations = sorted({row["separation"] for row in summary})
    figure, axes = plt.subplots(1, len(dims), figsize=(4.2 * len(dims) + 2.4, 3.6), sharey=True, squeeze=False)
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(separations)))
    for axis, dim in zip(axes[0], dims):
        for colour, separation in zip(colours, separations):
            for classifier, style in zip(CLASSIFIERS, ("-o", "--s")):
                cell = [r for r in summary if r["dim"] == dim and r["separation"] == separation
                        and r["classifier"] == classifier]
                axis.plot([r["n_per_set"] for r in cell], [r["mean_abs_error"] for r in cell], style, color=colour,
                          markersize=4, label=f"D={separation:g} (TV={cell[0]['true_tv']:.2f}) {classifier}")
        sizes = np.array(sorted({r["n_per_set"] for r in summary}), dtype=float)
        axis.plot(sizes, 0.8 * np.sqrt(0.5 / (0.3 * sizes)), ":", color="grey", label="0.8 sqrt(0.5 / n_test)")
        axis.set(xscale="log", yscale="log", title=f"d = {dim}", xlabel="rows per set n")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("mean |TV_hat - TV|")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.suptitle("estimate_tv vs closed form, N(m1, S) vs N(m2, S): mean over seeds", fontsize=10)
    figure.tight_layout()
    with atomic_open(path, "wb") as out:
        figure.savefig(out, dpi=130, format="png")
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    args = parse_experiment_args(__doc__.splitlines()[0], "tiny grid (smoke run)", argv)
    grid = QUICK if args.quick else FULL
    start = time.perf_counter()
    rows = run_grid(grid)
    summary = summarise(rows)
    report = {"grid": grid, "machine": machine(), "wall_seconds": time.perf_counter() - start, "summary": summary}

    with atomic_open(args.out / "gaussian_error.csv", "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_json(args.out / "gaussian_error.json", report)
    plot(summary, args.out / "gaussian_error.png")
    print(f"{len(rows)} runs in {report['wall_seconds']:.0f} s; mean |error| (linear class):")
    for row in summary:
        if row["classifier"] == "linear":
            print(f"  d={row['dim']:>2} D={row['separation']:<4g} n={row['n_per_set']:>5}  TV={row['true_tv']:.3f}  "
                  f"|err|={row['mean_abs_error']:.4f}  coverage={row['coverage']:.2f}")
    return report


if __name__ == "__main__":
    main()
