"""Wilson and Newcombe intervals: bounds from their defining equations, and coverage by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize
from scipy import stats

from xtf_kernels.fidelity.interval import rate_difference_interval
from xtf_kernels.fidelity.interval import wilson_interval


def wilson_by_root_finding(successes, trials, confidence):
    """The Wilson bounds are the proportions pi with |k/n - pi| = z sqrt(pi (1 - pi) / n)."""
    z = stats.norm.ppf(0.5 + confidence / 2)
    rate = successes / trials
    gap = lambda pi: (rate - pi) ** 2 - z * z * pi * (1 - pi) / trials
    # gap > 0 at 0 (rate > 0) and at 1 (rate < 1), < 0 just beside the rate: one root on each side.
    lower = 0.0 if successes == 0 else optimize.brentq(gap, 0.0, rate - 1e-12, xtol=1e-14)
    upper = 1.0 if successes == trials else optimize.brentq(gap, rate + 1e-12, 1.0, xtol=1e-14)
    return lower, upper


@pytest.mark.parametrize("successes, trials", [(0, 7), (1, 7), (7, 7), (13, 40), (500, 1000), (998, 1000)])
@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_wilson_bounds_solve_their_defining_equation(successes, trials, confidence):
    assert wilson_interval(successes, trials, confidence) == pytest.approx(
        wilson_by_root_finding(successes, trials, confidence), abs=1e-10
    )


def test_difference_interval_contains_the_difference_and_stays_in_range():
    for k_p, m_p, k_q, m_q in [(0, 10, 10, 10), (10, 10, 0, 10), (5, 10, 5, 10), (37, 50, 2, 40)]:
        lower, upper = rate_difference_interval(k_p, m_p, k_q, m_q, 0.95)
        assert -1.0 <= lower <= k_p / m_p - k_q / m_q <= upper <= 1.0


@pytest.mark.parametrize(
    "rate_p, rate_q, trials", [(0.6, 0.4, 60), (0.95, 0.05, 200), (0.5, 0.5, 30), (0.99, 0.9, 120)]
)
def test_difference_interval_covers_at_the_nominal_rate(rate_p, rate_q, trials):
    """Newcombe's hybrid interval has coverage close to nominal (slightly above, typically 95-97%)."""
    rng = np.random.default_rng(0)
    draws = 3000
    k_p = rng.binomial(trials, rate_p, size=draws)
    k_q = rng.binomial(trials, rate_q, size=draws)
    covered = 0
    for a, b in zip(k_p, k_q):
        lower, upper = rate_difference_interval(int(a), trials, int(b), trials, 0.95)
        covered += lower <= rate_p - rate_q <= upper
    assert 0.93 <= covered / draws <= 0.985, covered / draws


def test_higher_confidence_gives_a_wider_interval():
    narrow = rate_difference_interval(30, 50, 20, 50, 0.8)
    wide = rate_difference_interval(30, 50, 20, 50, 0.99)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]
