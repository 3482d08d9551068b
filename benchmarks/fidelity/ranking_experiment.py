"""Does ranking by TV_hat recover a known order of fidelity? Two experiments made from data available here.

1. Image patches (real data, degraded copies). The real set is random 8 x 8 patches (64 features, pixel
   values 0-255) of skimage's ``camera`` photograph. Each "generator" draws fresh patches of the same image
   and degrades them at increasing strength: additive Gaussian noise (sigma in pixel units), Gaussian blur
   of the image (sigma in pixels), or quantisation to fewer grey levels; one more set is fresh clean
   patches (a perfect generator). All sets are ranked together against the real set with
   ``rank_fidelity(..., classifier="max")``; within each family the known order is the strength.
2. Gaussian mixture (known distribution, true TV known). The real distribution is a 10-component mixture in
   16 dimensions (unit covariances, means 2.5 x a standard normal vector), like 10 classes of digits.
   Generators drop k modes (mode collapse) or shrink every component's covariance by a factor (too little
   diversity). Their true TV is computed by Monte Carlo from the exact densities, so the estimate can be
   compared with the value it bounds from below.

Each experiment runs for several seeds (a new draw of every set and a new split). Reported: the ranking per
seed, Kendall's tau between estimated and known order within each family, and TV_hat against strength /
true TV.

    python -m benchmarks.fidelity.ranking_experiment            # about 3 min on one CPU core
    python -m benchmarks.fidelity.ranking_experiment --quick    # smoke run

Writes results/ranking_experiment.json and results/ranking_experiment.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from scipy import stats
from scipy.special import logsumexp

from tests.fidelity.reference import tv_by_monte_carlo
from xtf_kernels._atomic import atomic_open
from xtf_kernels.fidelity import ClassifierOptions
from xtf_kernels.fidelity import rank_fidelity

from ._common import machine
from ._common import parse_experiment_args
from ._common import write_json

PATCH = 8
FULL = {
    "patches_per_set": 3000,
    "mixture_rows_per_set": 3000,
    "seeds": 3,
    "noise": [4.0, 8.0, 16.0, 32.0],
    "blur": [0.5, 1.0, 1.5, 2.5],
    "quantise": [32, 16, 8, 4],
    "dropped_modes": [1, 2, 3, 5],
    "shrink": [0.9, 0.75, 0.6, 0.4],
    "monte_carlo_rows": 400_000,
    "mlp_steps": 500,
}
QUICK = {
    "patches_per_set": 300,
    "mixture_rows_per_set": 300,
    "seeds": 1,
    "noise": [8.0, 32.0],
    "blur": [1.0, 2.5],
    "quantise": [16, 4],
    "dropped_modes": [2, 5],
    "shrink": [0.75, 0.4],
    "monte_carlo_rows": 20_000,
    "mlp_steps": 50,
}


# ----- experiment 1: degraded image patches -------------------------------------------------------------------


def camera_image() -> np.ndarray:
    from skimage import data

    return data.camera().astype(np.float64)


def patches(image: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, PATCH * PATCH) float32 patches at uniformly random positions."""
    rows = rng.integers(0, image.shape[0] - PATCH + 1, size=n)
    cols = rng.integers(0, image.shape[1] - PATCH + 1, size=n)
    offsets = np.arange(PATCH)
    block = image[(rows[:, None] + offsets)[:, :, None], (cols[:, None] + offsets)[:, None, :]]
    return block.reshape(n, -1).astype(np.float32)


def degraded_sets(image: np.ndarray, grid: dict, rng: np.random.Generator) -> dict[str, tuple[str, float, np.ndarray]]:
    """name -> (family, strength, patches); strength 0 is the clean generator shared by every family."""
    from skimage.filters import gaussian

    n = grid["patches_per_set"]
    sets = {"clean": ("clean", 0.0, patches(image, n, rng))}
    for sigma in grid["noise"]:
        noisy = patches(image, n, rng) + rng.normal(0.0, sigma, size=(n, PATCH * PATCH)).astype(np.float32)
        sets[f"noise sigma={sigma:g}"] = ("noise", sigma, noisy)
    for sigma in grid["blur"]:
        blurred = gaussian(image, sigma=sigma, preserve_range=True)
        sets[f"blur sigma={sigma:g}"] = ("blur", sigma, patches(blurred, n, rng))
    for levels in grid["quantise"]:
        step = 256 / levels
        quantised = np.floor(image / step) * step + step / 2
        # strength = 256 / levels, so a larger number is a stronger degradation in every family
        sets[f"quantise {levels} levels"] = ("quantise", step, patches(quantised, n, rng))
    return sets


# ----- experiment 2: Gaussian mixture with known true TV ---------------------------------------------------------


class Mixture:
    """Equal-weight mixture of N(means[k], scale^2 I) over the components in ``keep``."""

    def __init__(self, means: np.ndarray, keep: list[int], scale: float = 1.0):
        self.means, self.keep, self.scale = means, keep, scale

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        components = rng.choice(self.keep, size=n)
        return self.means[components] + self.scale * rng.normal(size=(n, self.means.shape[1]))

    def log_density(self, x: np.ndarray) -> np.ndarray:
        per_component = np.stack(
            [stats.multivariate_normal(self.means[k], self.scale**2).logpdf(x) for k in self.keep], axis=1
        )
        return logsumexp(per_component, axis=1) - np.log(len(self.keep))


def mixture_generators(grid: dict, means: np.ndarray) -> dict[str, tuple[str, float, Mixture]]:
    everything = list(range(len(means)))
    generators = {"exact": ("exact", 0.0, Mixture(means, everything))}
    for k in grid["dropped_modes"]:
        generators[f"drop {k} modes"] = ("drop modes", float(k), Mixture(means, everything[k:]))
    for factor in grid["shrink"]:
        # strength = 1 - factor: 0 = exact, larger = less diverse
        generators[f"shrink x{factor:g}"] = ("shrink", 1.0 - factor, Mixture(means, everything, scale=factor))
    return generators


# ----- shared ---------------------------------------------------------------------------------------------------


def family_members(sets: dict) -> dict[str, list[str]]:
    """family -> its sets, the strength-0 set ("clean" / "exact") included in every family."""
    zero = [name for name, (family, _, _) in sets.items() if family in ("clean", "exact")]
    families = sorted({family for family, _, _ in sets.values()} - {"clean", "exact"})
    return {family: zero + [name for name, (f, _, _) in sets.items() if f == family] for family in families}


def kendall_tau_per_family(sets: dict, order: list[str]) -> dict[str, float]:
    """Kendall's tau between known strength and estimated rank, per family."""
    rank = {name: i for i, name in enumerate(order)}
    return {
        family: float(stats.kendalltau([sets[n][1] for n in members], [rank[n] for n in members]).statistic)
        for family, members in family_members(sets).items()
    }


def separated_pairs_per_family(sets: dict, estimates: dict) -> dict[str, dict[str, int]]:
    """Pairs of one family whose intervals do not overlap: how many are in the known order, how many reversed."""
    counts = {}
    for family, members in family_members(sets).items():
        tally = {"in_order": 0, "reversed": 0, "overlapping": 0}
        for i, weaker in enumerate(members):
            for stronger in members[i + 1 :]:
                if sets[weaker][1] > sets[stronger][1]:
                    weaker, stronger = stronger, weaker
                if estimates[weaker]["upper"] < estimates[stronger]["lower"]:
                    tally["in_order"] += 1
                elif estimates[stronger]["upper"] < estimates[weaker]["lower"]:
                    tally["reversed"] += 1
                else:
                    tally["overlapping"] += 1
        counts[family] = tally
    return counts


def rank_sets(real, sets: dict, seed: int, options: ClassifierOptions) -> dict:
    ranking = rank_fidelity(real, {name: rows for name, (_, _, rows) in sets.items()}, classifier="max", seed=seed,
                            options=options)
    estimates = {entry.name: entry.estimate.to_dict() for entry in ranking}
    return {
        "order": ranking.names,
        "kendall_tau": kendall_tau_per_family(sets, ranking.names),
        "separated_pairs": separated_pairs_per_family(sets, estimates),
        "estimates": estimates,
        "table": ranking.table(),
    }


def run(grid: dict) -> dict:
    options = ClassifierOptions(mlp_steps=grid["mlp_steps"])
    image = camera_image()
    patch_runs, mixture_runs = [], []
    means = 2.5 * np.random.default_rng(12345).normal(size=(10, 16))
    truth = {}
    for name, (family, strength, generator) in mixture_generators(grid, means).items():
        real = Mixture(means, list(range(10)))
        tv, standard_error = tv_by_monte_carlo(real.sample, real.log_density, generator.log_density,
                                               grid["monte_carlo_rows"])
        truth[name] = {"family": family, "strength": strength, "true_tv": tv, "monte_carlo_se": standard_error}
    for seed in range(grid["seeds"]):
        rng = np.random.default_rng(seed)
        real_patches = patches(image, grid["patches_per_set"], rng)
        patch_sets = degraded_sets(image, grid, rng)
        result = rank_sets(real_patches, patch_sets, seed, options)
        result["strength"] = {name: [family, strength] for name, (family, strength, _) in patch_sets.items()}
        patch_runs.append(result)

        n = grid["mixture_rows_per_set"]
        real = Mixture(means, list(range(10))).sample(n, rng)
        mixture_sets = {name: (family, strength, generator.sample(n, rng))
                        for name, (family, strength, generator) in mixture_generators(grid, means).items()}
        result = rank_sets(real, mixture_sets, seed, options)
        names = list(truth)
        result["kendall_tau_all_sets_vs_true_tv"] = float(stats.kendalltau(
            [truth[name]["true_tv"] for name in names], [result["estimates"][name]["tv"] for name in names]
        ).statistic)
        mixture_runs.append(result)
    return {"patches": patch_runs, "mixture": mixture_runs, "mixture_truth": truth}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    strengths = report["patches"][0]["strength"]
    units = {"noise": "noise sigma (grey levels)", "blur": "blur sigma (pixels)",
             "quantise": "grey-level step (256 / levels)"}
    for axis, (family, unit) in zip(axes[:3], units.items()):
        names = ["clean"] + [name for name, (f, _) in strengths.items() if f == family]
        x = [strengths[name][1] for name in names]
        for run_index, run in enumerate(report["patches"]):
            tv = [run["estimates"][name]["tv"] for name in names]
            low = [t - run["estimates"][name]["lower"] for t, name in zip(tv, names)]
            high = [run["estimates"][name]["upper"] - t for t, name in zip(tv, names)]
            axis.errorbar(np.array(x) * (1 + 0.015 * run_index), tv, yerr=[low, high], fmt="o-", capsize=2,
                          markersize=3, label=f"seed {run_index}")
        tau = np.mean([run["kendall_tau"][family] for run in report["patches"]])
        axis.set(title=f"{family}: mean Kendall tau {tau:.2f}", xlabel=unit, ylabel="TV_hat (camera patches)",
                 ylim=(-0.02, 1.02))
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axis = axes[3]
    truth = report["mixture_truth"]
    for family, marker in (("exact", "s"), ("drop modes", "o"), ("shrink", "^")):
        names = [name for name, t in truth.items() if t["family"] == family]
        true_tv = [truth[name]["true_tv"] for name in names]
        tv = [np.mean([run["estimates"][name]["tv"] for run in report["mixture"]]) for name in names]
        axis.plot(true_tv, tv, marker, label=family)
    axis.plot([0, 1], [0, 1], ":", color="grey", label="TV_hat = TV")
    axis.set(title="10-mode mixture, d = 16", xlabel="true TV (Monte Carlo)", ylabel="TV_hat (mean of seeds)",
             xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.suptitle("Ranking by TV_hat (classifier max: best of linear / quadratic / mlp on validation rows); "
                    "bars: 95% Newcombe intervals", fontsize=10)
    figure.tight_layout()
    with atomic_open(path, "wb") as out:
        figure.savefig(out, dpi=120, format="png")
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    args = parse_experiment_args(__doc__.splitlines()[0], "small sets, one seed (smoke run)", argv)
    grid = QUICK if args.quick else FULL
    start = time.perf_counter()
    report = {"grid": grid, **run(grid)}
    report["machine"] = machine()
    report["wall_seconds"] = time.perf_counter() - start
    write_json(args.out / "ranking_experiment.json", report)
    plot(report, args.out / "ranking_experiment.png")
    for experiment in ("patches", "mixture"):
        for seed, run_result in enumerate(report[experiment]):
            print(f"== {experiment}, seed {seed}: Kendall tau per family {run_result['kendall_tau']}; pairs with "
                  f"separated intervals {run_result['separated_pairs']}")
            if "kendall_tau_all_sets_vs_true_tv" in run_result:
                tau = run_result["kendall_tau_all_sets_vs_true_tv"]
                print(f"Kendall tau of TV_hat vs true TV over all sets: {tau:.3f}")
            print(run_result["table"])
    print("mixture true TV:", {name: round(t["true_tv"], 3) for name, t in report["mixture_truth"].items()})
    print(f"wall {report['wall_seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
