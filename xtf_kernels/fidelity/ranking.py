"""Rank several synthetic sets by their estimated TV distance to one real set (lower = higher fidelity)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .estimator import LOWER_BOUND_NOTE
from .estimator import TVEstimate
from .estimator import estimate_tv
from .samples import SampleSet
from .samples import as_sample_matrix
from .samples import check_pair


@dataclass(frozen=True)
class RankedSet:
    """One synthetic set's place in a ranking: rank 1 is the closest to the real set."""

    rank: int
    name: str
    estimate: TVEstimate


@dataclass(frozen=True)
class FidelityRanking:
    """Synthetic sets sorted by TV_hat (ascending; ties keep the order they were given in)."""

    entries: tuple[RankedSet, ...]

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]

    def table(self) -> str:
        """A plain-text table, one row per synthetic set, best first, with the interval of each TV_hat."""
        header = ("rank", "synthetic set", "TV_hat", "CI", "held-out/set", "classifier")
        rows = [
            (
                str(entry.rank),
                entry.name,
                f"{entry.estimate.tv:.3f}",
                f"[{entry.estimate.lower:.3f}, {entry.estimate.upper:.3f}]",
                str(entry.estimate.n_test),
                entry.estimate.classifier,
            )
            for entry in self.entries
        ]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in (header, *rows)]
        confidence = self.entries[0].estimate.confidence
        lines.append(f"CI: {confidence:.0%} Newcombe binomial interval. Lower TV_hat = closer to the real set; "
                     f"{LOWER_BOUND_NOTE}.")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "note": LOWER_BOUND_NOTE,
            "ranking": [{"rank": e.rank, "name": e.name, **e.estimate.to_dict()} for e in self.entries],
        }


def rank_fidelity(real: SampleSet, synthetic: Mapping[str, SampleSet], **estimate_options) -> FidelityRanking:
    """Estimate TV(real, s) for every synthetic set s and sort them, lowest (most faithful) first.

    Args:
        real: (n, d) samples of the real data (torch.Tensor or numpy.ndarray).
        synthetic: name -> (n_s, d) samples of each synthetic set, same d and device as ``real``.
        **estimate_options: passed to :func:`~xtf_kernels.fidelity.estimate_tv` (classifier, seed,
            test_fraction, ...); every set is compared with the same options and seed.

    Returns:
        :class:`FidelityRanking`. Two sets whose intervals overlap are not reliably ordered; each TV_hat is a
        lower bound on the set's TV distance to the real data.
    """
    if not isinstance(synthetic, Mapping) or len(synthetic) == 0:
        raise TypeError(f"synthetic must be a non-empty mapping name -> samples, got {type(synthetic).__name__}")
    real_rows = as_sample_matrix("real", real)
    estimates = []
    for name, samples in synthetic.items():
        if not isinstance(name, str):
            raise TypeError(f"synthetic set names must be strings, got {name!r}")
        label = f"synthetic set {name!r}"
        rows = as_sample_matrix(label, samples)
        check_pair(real_rows, rows, p_name="real", q_name=label)
        try:
            estimates.append((name, estimate_tv(real_rows, rows, **estimate_options)))
        except ValueError as exc:  # e.g. too few rows: say which comparison (p = real, q = this set)
            raise ValueError(f"comparing {label} (q) with the real set (p): {exc}") from exc
    ordered = sorted(estimates, key=lambda item: item[1].tv)
    return FidelityRanking(tuple(RankedSet(rank, name, est) for rank, (name, est) in enumerate(ordered, start=1)))
