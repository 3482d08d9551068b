"""Binomial confidence interval for TV_hat = P(f = 1) - Q(f = 1) measured on held-out rows.

On the held-out split the classifier f is fixed, so k_p = #{P rows with f = 1} ~ Binomial(m_p, a) and
k_q ~ Binomial(m_q, b) independently, with a - b = P(f = 1) - Q(f = 1). The interval for a - b is
Newcombe's (1998, method 10) hybrid score interval: it combines the Wilson score intervals of the two
proportions, keeps its coverage near nominal down to a handful of rows and near 0 or 1 (where the Wald
interval collapses to a point), and needs no resampling, so it is deterministic.
"""

from __future__ import annotations

import math
from statistics import NormalDist


def wilson_interval(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion successes / trials (trials >= 1)."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    rate = successes / trials
    denominator = 1 + z * z / trials
    centre = (rate + z * z / (2 * trials)) / denominator
    half_width = z / denominator * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def rate_difference_interval(
    successes_p: int, trials_p: int, successes_q: int, trials_q: int, confidence: float
) -> tuple[float, float]:
    """Newcombe hybrid score interval of successes_p / trials_p - successes_q / trials_q, within [-1, 1]."""
    rate_p, rate_q = successes_p / trials_p, successes_q / trials_q
    low_p, high_p = wilson_interval(successes_p, trials_p, confidence)
    low_q, high_q = wilson_interval(successes_q, trials_q, confidence)
    difference = rate_p - rate_q
    lower = difference - math.hypot(rate_p - low_p, high_q - rate_q)
    upper = difference + math.hypot(high_p - rate_p, rate_q - low_q)
    return max(-1.0, lower), min(1.0, upper)
