"""Sample-set checks and the balanced, seeded train / validation / test split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xtf_kernels.fidelity.samples import MIN_ROWS_PER_SPLIT
from xtf_kernels.fidelity.samples import as_sample_matrix
from xtf_kernels.fidelity.samples import balanced_split
from xtf_kernels.fidelity.samples import check_pair


def test_sample_matrix_is_float32_same_values():
    array = np.arange(12, dtype=np.int16).reshape(4, 3)
    tensor = as_sample_matrix("x", array)
    assert tensor.dtype == torch.float32 and tensor.shape == (4, 3)
    assert torch.equal(tensor, torch.arange(12, dtype=torch.float32).reshape(4, 3))
    assert torch.equal(as_sample_matrix("x", torch.ones(2, 2, dtype=torch.float64)), torch.ones(2, 2))
    assert as_sample_matrix("x", np.ones((3, 1), dtype=bool)).sum() == 3


def test_sample_matrix_refuses_gradients_tracking_nothing():
    leaf = torch.randn(5, 2, requires_grad=True)
    assert not as_sample_matrix("x", leaf).requires_grad


@pytest.mark.parametrize(
    "samples, error, match",
    [
        (torch.zeros(3), ValueError, "x must be 2-D"),
        (torch.zeros(2, 3, 4), ValueError, r"reshape\(len\(x\), -1\)"),
        (torch.zeros(3, 0), ValueError, "no features"),
        (torch.zeros(3, 2, dtype=torch.complex64), TypeError, "real numbers"),
        ("not an array", TypeError, "torch.Tensor or numpy.ndarray"),
        (torch.tensor([[0.0, float("nan")], [1.0, 2.0], [float("inf"), 0.0]]), ValueError,
         r"2 row\(s\) with NaN or inf values \(first rows: \[0, 2\]"),
    ],
)
def test_sample_matrix_refuses(samples, error, match):
    with pytest.raises(error, match=match):
        as_sample_matrix("x", samples)


def test_pair_needs_same_features():
    with pytest.raises(ValueError, match=r"real is \(4, 2\), synthetic is \(4, 3\)"):
        check_pair(torch.zeros(4, 2), torch.zeros(4, 3), p_name="real", q_name="synthetic")


def split(n_p, n_q, *, test=0.3, validation=0.2, max_samples=None, seed=0):
    p = torch.arange(n_p, dtype=torch.float32).reshape(-1, 1)
    q = -1 - torch.arange(n_q, dtype=torch.float32).reshape(-1, 1)
    return balanced_split(p, q, test_fraction=test, validation_fraction=validation, max_samples=max_samples,
                          generator=torch.Generator().manual_seed(seed))


def test_split_is_balanced_disjoint_and_drawn_from_each_set():
    parts = split(137, 400)
    assert (parts.n_train, parts.n_validation, parts.n_test) == (69, 27, 41)
    for side, sign in (("p", 1), ("q", -1)):
        rows = torch.cat([getattr(parts, f"{name}_{side}") for name in ("train", "validation", "test")]).flatten()
        assert len(rows) == 137 and len(set(rows.tolist())) == 137  # disjoint, no repeats
        assert bool((rows * sign >= 0).all())  # P rows only on the P side


def test_split_is_fixed_by_the_seed():
    assert torch.equal(split(50, 60, seed=3).test_p, split(50, 60, seed=3).test_p)
    assert not torch.equal(split(50, 60, seed=3).test_p, split(50, 60, seed=4).test_p)


def test_split_caps_rows_per_set():
    parts = split(500, 500, max_samples=100, validation=0.0)
    assert parts.n_train + parts.n_test == 100 and parts.n_validation == 0


def test_split_refuses_too_few_rows_per_part():
    smallest = split(2 * MIN_ROWS_PER_SPLIT, 50, test=0.5, validation=0.0)
    assert smallest.n_test == MIN_ROWS_PER_SPLIT
    with pytest.raises(ValueError, match=r"too few samples.*train=9, test=10.*n_p=19, n_q=50"):
        split(2 * MIN_ROWS_PER_SPLIT - 1, 50, test=0.5, validation=0.0)
