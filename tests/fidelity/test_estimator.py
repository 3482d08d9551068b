"""estimate_tv against true TV distances: closed form for equal covariances, quadrature for unequal ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from scipy import stats

from xtf_kernels.fidelity import ClassifierOptions
from xtf_kernels.fidelity import TVEstimate
from xtf_kernels.fidelity import estimate_tv

from .reference import gaussian_pair
from .reference import sample_gaussian
from .reference import tv_by_integration_1d
from .reference import tv_by_integration_2d
from .reference import tv_by_monte_carlo
from .reference import tv_equal_covariance

FAST_MLP = ClassifierOptions(mlp_steps=60, mlp_hidden=16)


def gaussian_sets(dim: int, mahalanobis: float, n: int, seed: int):
    mean_p, mean_q, covariance = gaussian_pair(dim, mahalanobis, seed)
    rng = np.random.default_rng(seed + 1000)
    return sample_gaussian(mean_p, covariance, n, rng), sample_gaussian(mean_q, covariance, n, rng)


@pytest.mark.parametrize("dim", [2, 8, 32])
@pytest.mark.parametrize("mahalanobis", [1.0, 3.0])
def test_equal_covariance_matches_closed_form(dim, mahalanobis):
    p, q = gaussian_sets(dim, mahalanobis, 4000, seed=dim)
    true_tv = tv_equal_covariance(mahalanobis)
    estimate = estimate_tv(p, q, classifier="linear", seed=0)
    # 1200 held-out rows per set: the binomial sd of the difference is <= 0.02; 0.06 leaves room for the
    # shortfall of a classifier fitted on 2800 rows per set in 32 dimensions.
    assert abs(estimate.tv - true_tv) < 0.06, (estimate, true_tv)
    assert estimate.lower - 0.02 <= true_tv <= estimate.upper + 0.02, (estimate, true_tv)


def mean_abs_error(dim, mahalanobis, n, seeds, classifier="linear"):
    true_tv = tv_equal_covariance(mahalanobis)
    errors = []
    for seed in seeds:
        p, q = gaussian_sets(dim, mahalanobis, n, seed)
        errors.append(abs(estimate_tv(p, q, classifier=classifier, seed=seed).tv - true_tv))
    return float(np.mean(errors))


def test_error_shrinks_as_n_grows():
    # Held-out binomial noise alone gives a mean |error| of about 0.8 * sqrt(0.5 / n_test): 0.052, 0.016
    # and 0.005 at n_test = 60, 600, 6000 rows per set.
    errors = [mean_abs_error(4, 1.5, n, seeds=range(10)) for n in (200, 2000, 20000)]
    assert errors[0] > 2 * errors[1] > 4 * errors[2], errors
    assert errors[2] < 0.012, errors


def test_error_is_smaller_when_distributions_are_farther_apart():
    # 300 held-out rows per set; binomial sd of the difference 0.040 at D = 0.5 (rates near 0.6 / 0.4),
    # 0.012 at D = 4 (rates near 0.98 / 0.02). 30 seeds: the mean |error| is known to about +-20%.
    near = mean_abs_error(4, 0.5, 1000, seeds=range(30))
    far = mean_abs_error(4, 4.0, 1000, seeds=range(30))
    assert far < near / 2, (near, far)


@pytest.mark.parametrize("classifier", ["quadratic", "mlp", "max"])
def test_every_class_recovers_the_equal_covariance_closed_form(classifier):
    p, q = gaussian_sets(3, 2.0, 3000, seed=3)
    estimate = estimate_tv(p, q, classifier=classifier, seed=0)
    assert abs(estimate.tv - tv_equal_covariance(2.0)) < 0.05, estimate


def test_unequal_variances_1d_quadratic_matches_quadrature_and_linear_is_a_lower_bound():
    rng = np.random.default_rng(0)
    p = rng.normal(0.0, 1.0, size=(10000, 1))
    q = rng.normal(0.5, 2.0, size=(10000, 1))
    true_tv = tv_by_integration_1d(0.0, 1.0, 0.5, 2.0)
    quadratic = estimate_tv(p, q, classifier="quadratic")
    assert abs(quadratic.tv - true_tv) < 0.03, (quadratic, true_tv)
    assert quadratic.lower <= true_tv <= quadratic.upper
    # A threshold on x cannot see a difference in spread: the linear bound is far below the truth.
    linear = estimate_tv(p, q, classifier="linear")
    assert linear.tv < true_tv - 0.15, (linear, true_tv)


def test_unequal_covariances_2d_match_quadrature():
    mean_p, cov_p = np.zeros(2), np.eye(2)
    mean_q, cov_q = np.array([0.8, -0.3]), np.array([[2.0, 0.6], [0.6, 0.7]])
    rng = np.random.default_rng(1)
    p = sample_gaussian(mean_p, cov_p, 10000, rng)
    q = sample_gaussian(mean_q, cov_q, 10000, rng)
    true_tv = tv_by_integration_2d(mean_p, cov_p, mean_q, cov_q)
    estimate = estimate_tv(p, q, classifier="quadratic")
    assert abs(estimate.tv - true_tv) < 0.03, (estimate, true_tv)
    assert estimate.lower <= true_tv <= estimate.upper


def test_integration_reference_matches_closed_form():
    """The quadrature used above, checked where the answer is known."""
    assert tv_by_integration_1d(0.0, 1.3, 1.1, 1.3) == pytest.approx(tv_equal_covariance(1.1 / 1.3), abs=1e-9)
    cov = np.array([[1.0, 0.5], [0.5, 2.0]])
    mean_q = np.array([1.0, -0.5])
    mahalanobis = float(np.sqrt(mean_q @ np.linalg.solve(cov, mean_q)))
    assert tv_by_integration_2d(np.zeros(2), cov, mean_q, cov) == pytest.approx(
        tv_equal_covariance(mahalanobis), abs=2e-7
    )
    normal = stats.norm(0.0, 1.0)
    shifted = stats.norm(1.5, 1.0)
    tv, standard_error = tv_by_monte_carlo(lambda n, rng: rng.normal(size=(n, 1)), lambda x: normal.logpdf(x[:, 0]),
                                           lambda x: shifted.logpdf(x[:, 0]), 200_000)
    assert abs(tv - tv_equal_covariance(1.5)) < 4 * standard_error < 0.01


def test_selection_is_on_validation_rows_and_unbiased_when_p_equals_q():
    """With P = Q every class has true P(f=1) - Q(f=1) = 0; the maximum over classes of their test values
    would be biased upwards, the test value of the class selected on separate validation rows is not."""
    raw = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        p, q = rng.normal(size=(400, 3)), rng.normal(size=(400, 3))
        estimate = estimate_tv(p, q, classifier=("linear", "quadratic"), seed=seed)
        assert set(estimate.validation_tv) == {"linear", "quadratic"}
        assert estimate.classifier == max(estimate.validation_tv, key=estimate.validation_tv.get)
        assert estimate.n_validation == 80 and estimate.n_test == 120 and estimate.n_train == 200
        raw.append(estimate.p_positive_rate - estimate.q_positive_rate)
    # sd of one raw value ~ sqrt(0.5 / 120) = 0.065, of the mean of 20 ~ 0.015.
    assert abs(np.mean(raw)) < 0.045, raw


def test_max_selects_a_nonlinear_class_for_a_difference_in_spread():
    rng = np.random.default_rng(2)
    p, q = rng.normal(size=(2000, 2)), 2.5 * rng.normal(size=(2000, 2))
    estimate = estimate_tv(p, q, classifier="max", options=FAST_MLP)
    assert set(estimate.validation_tv) == {"linear", "quadratic", "mlp"}
    assert estimate.classifier in ("quadratic", "mlp")
    assert estimate.validation_tv[estimate.classifier] > estimate.validation_tv["linear"] + 0.2


def test_same_seed_same_result_and_numpy_equals_torch():
    p, q = gaussian_sets(5, 1.0, 600, seed=4)
    first = estimate_tv(p, q, classifier="mlp", seed=7, options=FAST_MLP)
    again = estimate_tv(torch.from_numpy(p), torch.from_numpy(q), classifier="mlp", seed=7, options=FAST_MLP)
    assert first.to_dict() == again.to_dict()
    others = {estimate_tv(p, q, classifier="mlp", seed=s, options=FAST_MLP).p_positive_rate for s in range(1, 6)}
    assert len(others | {first.p_positive_rate}) > 1  # the seed does change the split


def test_larger_set_is_subsampled_to_the_smaller():
    rng = np.random.default_rng(5)
    estimate = estimate_tv(rng.normal(size=(300, 2)), rng.normal(size=(1000, 2)), test_fraction=0.25)
    assert (estimate.n_train, estimate.n_test, estimate.n_validation) == (225, 75, 0)
    capped = estimate_tv(rng.normal(size=(300, 2)), rng.normal(size=(1000, 2)), max_samples=100)
    assert capped.n_train + capped.n_test == 100


def test_runs_inside_inference_mode_on_inference_tensors():
    p, q = gaussian_sets(3, 2.0, 500, seed=6)
    expected = estimate_tv(p, q, classifier="max", options=FAST_MLP)
    with torch.inference_mode():
        estimate = estimate_tv(torch.from_numpy(p), torch.from_numpy(q), classifier="max", options=FAST_MLP)
    assert estimate.to_dict() == expected.to_dict()


def test_integer_and_low_precision_inputs_are_used_as_float32():
    rng = np.random.default_rng(8)
    p = rng.integers(0, 200, size=(400, 6), dtype=np.uint8)
    q = rng.integers(50, 256, size=(400, 6), dtype=np.uint8)
    expected = estimate_tv(p.astype(np.float32), q.astype(np.float32))
    # True TV = 1 - (150 / 206)^6 = 0.851 (uniform cubes overlapping on [50, 200)^6).
    assert 0.7 < expected.tv < 0.851 + 0.07, expected
    assert estimate_tv(p, q).to_dict() == expected.to_dict()
    # Integers up to 256 are exact in float16 and bfloat16.
    low = estimate_tv(torch.from_numpy(p).half(), torch.from_numpy(q).bfloat16())
    assert low.to_dict() == expected.to_dict()


def test_result_states_it_is_a_lower_bound():
    p, q = gaussian_sets(2, 1.0, 200, seed=9)
    estimate = estimate_tv(p, q)
    for text in (str(estimate), repr(estimate), estimate.to_dict()["note"]):
        assert "lower bound" in text
    assert estimate.balanced_error == pytest.approx((1 - (estimate.p_positive_rate - estimate.q_positive_rate)) / 2)


@settings(max_examples=15, deadline=None)
@given(
    n_p=st.integers(40, 150),
    n_q=st.integers(40, 150),
    dim=st.integers(1, 6),
    shift=st.floats(0.0, 3.0),
    classifier=st.sampled_from(["linear", "quadratic"]),
    seed=st.integers(0, 2**31),
)
def test_estimate_and_interval_are_ordered_within_unit_interval(n_p, n_q, dim, shift, classifier, seed):
    rng = np.random.default_rng(seed)
    estimate = estimate_tv(rng.normal(size=(n_p, dim)), rng.normal(shift, 1.0, size=(n_q, dim)),
                           classifier=classifier, seed=seed)
    assert isinstance(estimate, TVEstimate)
    assert 0.0 <= estimate.lower <= estimate.tv <= estimate.upper <= 1.0
    assert estimate.n_train + estimate.n_test == min(n_p, n_q)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("classifier", ["linear", "quadratic", "mlp"])
def test_cuda_inputs_run_on_cuda_and_agree_with_cpu(classifier):
    p, q = gaussian_sets(8, 2.0, 3000, seed=10)
    cpu = estimate_tv(p, q, classifier=classifier)
    cuda = estimate_tv(torch.from_numpy(p).cuda(), torch.from_numpy(q).cuda(), classifier=classifier)
    assert cuda.n_test == cpu.n_test
    assert abs(cuda.tv - cpu.tv) < 0.03, (cpu, cuda)


@pytest.mark.parametrize(
    "p, q, kwargs, error, match",
    [
        (np.zeros((20, 2)), np.zeros((20, 2)), {}, ValueError, "too few samples"),
        (np.zeros((200, 2)), np.zeros((200, 3)), {}, ValueError, "same number of features"),
        (np.zeros(200), np.zeros((200, 1)), {}, ValueError, "p must be 2-D"),
        (np.zeros((200, 1)), np.zeros((200, 2, 2)), {}, ValueError, "q must be 2-D"),
        (np.zeros((200, 0)), np.zeros((200, 0)), {}, ValueError, "no features"),
        ([[0.0]] * 200, np.zeros((200, 1)), {}, TypeError, "p must be a torch.Tensor or numpy.ndarray"),
        (np.zeros((200, 1), dtype=complex), np.zeros((200, 1)), {}, TypeError, "real numbers"),
        (np.array(["a"] * 200).reshape(200, 1), np.zeros((200, 1)), {}, TypeError, "real numbers"),
        (np.zeros((200, 2)), np.zeros((200, 2)), {"classifier": "cubic"}, ValueError, "classifier must be one of"),
        (np.zeros((200, 2)), np.zeros((200, 2)), {"classifier": ()}, TypeError, "non-empty"),
        (np.zeros((200, 2)), np.zeros((200, 2)), {"classifier": ("mlp", "mlp")}, ValueError, "twice"),
        (np.zeros((200, 2)), np.zeros((200, 2)), {"test_fraction": 0.0}, ValueError, "test_fraction"),
        (np.zeros((200, 2)), np.zeros((200, 2)), {"test_fraction": 1.5}, ValueError, "test_fraction"),
        (np.zeros((200, 2)), np.zeros((200, 2)), {"test_fraction": 0.6, "classifier": "max",
                                                  "validation_fraction": 0.4}, ValueError, "leave rows to train"),
        (np.zeros((200, 2)), np.zeros((200, 2)), {"confidence": 1.0}, ValueError, "confidence"),
        (np.zeros((200, 2)), np.zeros((200, 2)), {"confidence": float("nan")}, TypeError, "confidence"),
        (np.zeros((200, 2)), np.zeros((200, 2)), {"seed": -1}, ValueError, "seed"),
        (np.zeros((200, 2)), np.zeros((200, 2)), {"seed": 1.5}, TypeError, "seed"),
        (np.zeros((200, 2)), np.zeros((200, 2)), {"max_samples": 0}, ValueError, "max_samples"),
        (np.zeros((200, 2)), np.zeros((200, 2)), {"options": {"l2": 1.0}}, TypeError, "ClassifierOptions"),
    ],
)
def test_bad_input_is_refused_with_a_named_error(p, q, kwargs, error, match):
    with pytest.raises(error, match=match):
        estimate_tv(p, q, **kwargs)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf"), 1e300])
def test_non_finite_rows_are_refused_with_their_indices(bad_value):
    q = np.zeros((200, 3))
    q[17, 1] = bad_value
    q[150, 0] = bad_value
    with pytest.raises(ValueError, match=r"q has 2 row\(s\) with NaN or inf values \(first rows: \[17, 150\]"):
        estimate_tv(np.zeros((200, 3)), q)


def test_too_few_rows_for_the_validation_split_is_refused():
    rng = np.random.default_rng(0)
    estimate_tv(rng.normal(size=(45, 2)), rng.normal(size=(45, 2)))  # 31 train / 14 test rows per set: enough
    with pytest.raises(ValueError, match="validation=9"):
        estimate_tv(rng.normal(size=(45, 2)), rng.normal(size=(45, 2)), classifier=("linear", "quadratic"))
