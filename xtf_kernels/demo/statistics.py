"""Statistics of the miniature's comparisons: paired intervals, a permutation test, McNemar, AUROC / AUPRC.

- :func:`paired_interval`: mean of paired differences with a 95% Student-t interval (per-seed differences
  of a metric, or per-problem 0/1 differences of exact match);
- :func:`permutation_test`: two-sided sign-flip test of paired differences (exact when there are at most
  2**16 sign patterns, else Monte-Carlo with a seeded generator);
- :func:`mcnemar`: exact McNemar test of two methods' per-problem correctness (binomial on discordant pairs);
- :func:`auroc` / :func:`auprc`: ranking quality of a per-token noise score against the ground truth (ties
  count one half; average precision with ties broken against the method).
scipy is imported lazily (the ``[hf]`` extra).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch


def _floats(name: str, values) -> torch.Tensor:
    tensor = torch.as_tensor(values, dtype=torch.float64).flatten()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be finite")
    return tensor


def paired_interval(differences: Sequence[float], confidence: float = 0.95) -> dict:
    """{"mean", "low", "high", "n"}: Student-t interval of the mean difference (low = high = mean if n < 2)."""
    from scipy import stats

    d = _floats("differences", differences)
    n = d.numel()
    if n == 0:
        raise ValueError("differences must not be empty")
    mean = float(d.mean())
    if n < 2:
        return {"mean": mean, "low": mean, "high": mean, "n": n}
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(d.std(unbiased=True)) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def permutation_test(differences: Sequence[float], *, rounds: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value of "the paired differences are symmetric around 0" (sign flips of |d|)."""
    d = _floats("differences", differences)
    d = d[d != 0]  # zero differences are unchanged by a flip
    n = d.numel()
    if n == 0:
        return 1.0
    observed = abs(float(d.sum()))
    if n <= 16:
        signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=n)), dtype=torch.float64)
        totals = (signs * d.abs()).sum(1).abs()
        return float((totals >= observed - 1e-12).double().mean())
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (rounds, n), generator=generator, dtype=torch.float64) * 2 - 1
    totals = (signs * d.abs()).sum(1).abs()
    return float(((totals >= observed - 1e-12).sum() + 1) / (rounds + 1))


def mcnemar(first: Sequence[int], second: Sequence[int]) -> dict:
    """{"only_first", "only_second", "p"}: exact two-sided McNemar test on per-problem 0/1 correctness."""
    from scipy import stats

    if len(first) != len(second):
        raise ValueError(f"first and second must pair up, got {len(first)} and {len(second)}")
    only_first = sum(1 for a, b in zip(first, second) if a and not b)
    only_second = sum(1 for a, b in zip(first, second) if b and not a)
    discordant = only_first + only_second
    p = 1.0 if discordant == 0 else float(stats.binomtest(only_first, discordant, 0.5).pvalue)
    return {"only_first": only_first, "only_second": only_second, "p": p}


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """P(score of a positive > score of a negative), ties one half; None without both classes."""
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    order = torch.argsort(scores)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    unique, inverse = torch.unique(scores, return_inverse=True)
    sums = torch.zeros(unique.numel(), dtype=torch.float64).index_add_(0, inverse, ranks)
    sizes = torch.bincount(inverse, minlength=unique.numel()).double()
    ranks = (sums / sizes)[inverse]  # average ranks of ties
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def auprc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Average precision of ranking by ``scores`` (descending; ties ordered negatives first); None without
    positives. Its chance level is the positive rate."""
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    positives = int(labels.sum())
    if positives == 0 or labels.numel() == 0:
        return None
    negatives_first = torch.argsort(labels.to(torch.int8), stable=True)
    order = negatives_first[torch.argsort(-scores[negatives_first], stable=True)]
    hits = labels[order].double()
    precision = hits.cumsum(0) / torch.arange(1, hits.numel() + 1, dtype=torch.float64)
    return float((precision * hits).sum() / positives)
