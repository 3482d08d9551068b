"""Statistics of the comparisons against independent references: brute-force AUROC / AUPRC, the t interval
from its formula, exact permutation and McNemar p-values by enumeration."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from xtf_kernels.demo.statistics import auprc
from xtf_kernels.demo.statistics import auroc
from xtf_kernels.demo.statistics import mcnemar
from xtf_kernels.demo.statistics import paired_interval
from xtf_kernels.demo.statistics import permutation_test


def brute_auroc(scores: list[float], labels: list[bool]) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def brute_auprc(scores: list[float], labels: list[bool]) -> float:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], labels[i]))  # ties: negatives first
    hits, total = 0, 0.0
    for rank, i in enumerate(order, 1):
        if labels[i]:
            hits += 1
            total += hits / rank
    return total / sum(labels)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_auprc_against_brute_force_with_ties(seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 7, (47,), generator=generator).double()  # many ties
    labels = torch.rand(47, generator=generator) < 0.3
    assert auroc(scores, labels) == pytest.approx(brute_auroc(scores.tolist(), labels.tolist()), abs=1e-12)
    assert auprc(scores, labels) == pytest.approx(brute_auprc(scores.tolist(), labels.tolist()), abs=1e-12)


def test_ranking_edge_cases():
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([True, True])) is None
    assert auprc(torch.tensor([1.0, 2.0]), torch.tensor([False, False])) is None
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([False, True])) == 1.0
    assert auprc(torch.tensor([5.0, 5.0]), torch.tensor([True, False])) == 0.5  # a tie ranks the negative first


def test_paired_interval_is_the_t_interval():
    d = [0.1, -0.05, 0.2, 0.15, 0.0]
    mean = sum(d) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    half = 2.7764451051977987 * sd / math.sqrt(5)  # t_{0.975, 4}
    out = paired_interval(d)
    assert (out["mean"], out["low"], out["high"], out["n"]) == pytest.approx((mean, mean - half, mean + half, 5))
    assert paired_interval([0.3]) == {"mean": 0.3, "low": 0.3, "high": 0.3, "n": 1}
    with pytest.raises(ValueError, match="differences must not be empty"):
        paired_interval([])
    with pytest.raises(ValueError, match="differences must be finite"):
        paired_interval([float("nan")])


def test_permutation_test_exact_by_enumeration():
    d = [1.0, 2.0, -0.5, 3.0, 0.0, 1.5]
    nonzero = [x for x in d if x]
    observed = abs(sum(nonzero))
    flips = [abs(sum(s * abs(x) for s, x in zip(signs, nonzero))) for signs in
             itertools.product((-1, 1), repeat=len(nonzero))]
    expected = sum(f >= observed - 1e-12 for f in flips) / len(flips)
    assert permutation_test(d) == pytest.approx(expected)
    assert permutation_test([0.0, 0.0]) == 1.0


def test_permutation_test_monte_carlo_for_many_pairs():
    strong = [1.0] * 30 + [-1.0] * 2
    p = permutation_test(strong, rounds=4000, seed=1)
    assert p < 0.001 and p == permutation_test(strong, rounds=4000, seed=1)
    assert permutation_test([1.0, -1.0] * 20, rounds=4000) > 0.9


def test_mcnemar_is_the_exact_binomial_on_discordant_pairs():
    first = [1, 1, 1, 1, 1, 0, 0, 1, 0, 1]
    second = [0, 0, 0, 0, 1, 1, 0, 1, 0, 0]
    out = mcnemar(first, second)
    b, c = 5, 1
    n = b + c
    p = min(1.0, 2 * sum(math.comb(n, k) for k in range(0, min(b, c) + 1)) / 2**n)
    assert (out["only_first"], out["only_second"]) == (b, c) and out["p"] == pytest.approx(p)
    assert mcnemar([1, 0], [1, 0])["p"] == 1.0
    with pytest.raises(ValueError, match="must pair up"):
        mcnemar([1], [1, 0])
