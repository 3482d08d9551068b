"""Hypothesis classes against float64 references: the logistic optimum (scipy), the Ledoit-Wolf definition,
the Bayes rule of known Gaussians; the MLP on a problem no quadratic rule solves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import optimize
from scipy import stats

from xtf_kernels.fidelity import ClassifierOptions
from xtf_kernels.fidelity import estimate_tv
from xtf_kernels.fidelity.classifiers import _ledoit_wolf_covariance
from xtf_kernels.fidelity.classifiers import fit_classifier


def fit(name, p, q, options=None, seed=0):
    features = torch.cat([torch.as_tensor(p), torch.as_tensor(q)]).float()
    labels = torch.cat([torch.ones(len(p)), torch.zeros(len(q))])
    return fit_classifier(name, features, labels, options=options or ClassifierOptions(),
                          generator=torch.Generator().manual_seed(seed))


def ledoit_wolf_by_definition(x):
    """(1 - s) S + s mu I with s = min(b2, d2) / d2 from the per-sample sum (Ledoit & Wolf 2004, eq. 14)."""
    n, d = x.shape
    centred = x - x.mean(axis=0)
    sample_cov = centred.T @ centred / n
    mu = np.trace(sample_cov) / d
    d2 = np.sum((sample_cov - mu * np.eye(d)) ** 2) / d
    b2 = sum(np.sum((np.outer(row, row) - sample_cov) ** 2) for row in centred) / (n * n * d)
    shrinkage = min(b2, d2) / d2
    return (1 - shrinkage) * sample_cov + shrinkage * mu * np.eye(d)


@pytest.mark.parametrize("n, d", [(50, 7), (9, 23), (400, 3)])
def test_ledoit_wolf_matches_its_definition(n, d):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 3.0
    got = _ledoit_wolf_covariance(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ledoit_wolf_by_definition(x), rtol=1e-10, atol=1e-12)
    assert np.linalg.eigvalsh(got).min() > 0  # invertible even with n < d


def test_logistic_matches_the_scipy_optimum_of_the_same_objective():
    rng = np.random.default_rng(1)
    p = rng.normal(0.4, 1.0, size=(300, 5))
    q = rng.normal(-0.2, 1.5, size=(300, 5))
    l2 = 0.05
    x = np.concatenate([p, q]).astype(np.float32).astype(np.float64)
    y = np.concatenate([np.ones(300), np.zeros(300)])
    mean, std = x.mean(axis=0), x.std(axis=0)
    z = (x - mean) / std

    def objective(params):
        logits = z @ params[:-1] + params[-1]
        return np.mean(np.logaddexp(0, logits) - y * logits) + 0.5 * l2 * params[:-1] @ params[:-1]

    params = optimize.minimize(objective, np.zeros(6), method="BFGS", options={"gtol": 1e-10}).x
    fresh = rng.normal(0.1, 1.3, size=(2000, 5))
    expected = ((fresh - mean) / std) @ params[:-1] + params[-1] > 0
    decide = fit("linear", p, q, ClassifierOptions(l2=l2))
    got = decide(torch.from_numpy(fresh).float()).numpy()
    assert np.mean(got == expected) > 0.998


def test_quadratic_agrees_with_the_bayes_rule_of_known_gaussians():
    mean_p, cov_p = np.array([0.0, 1.0, 0.0]), np.diag([1.0, 0.5, 2.0])
    mean_q, cov_q = np.array([0.5, 0.0, 0.0]), np.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.6]])
    rng = np.random.default_rng(2)
    p = rng.multivariate_normal(mean_p, cov_p, size=20000)
    q = rng.multivariate_normal(mean_q, cov_q, size=20000)
    fresh = np.concatenate([rng.multivariate_normal(m, c, 3000) for m, c in ((mean_p, cov_p), (mean_q, cov_q))])
    log_p = stats.multivariate_normal(mean_p, cov_p).logpdf(fresh)
    bayes = log_p > stats.multivariate_normal(mean_q, cov_q).logpdf(fresh)
    got = fit("quadratic", p, q)(torch.from_numpy(fresh).float()).numpy()
    assert np.mean(got == bayes) > 0.98


def test_mlp_separates_a_disc_from_a_surrounding_ring_where_linear_cannot():
    rng = np.random.default_rng(3)
    angle = rng.uniform(0, 2 * np.pi, size=(2, 1500))
    radius = np.stack([np.sqrt(rng.uniform(0, 1, 1500)), rng.uniform(1.2, 1.6, 1500)])
    disc, ring = (np.stack([r * np.cos(a), r * np.sin(a)], axis=1) for r, a in zip(radius, angle))
    options = ClassifierOptions(mlp_steps=300, mlp_hidden=32, mlp_learning_rate=1e-2)
    assert estimate_tv(disc, ring, classifier="mlp", options=options).tv > 0.9  # true TV = 1
    assert estimate_tv(disc, ring, classifier="linear").tv < 0.15


def test_mlp_initialisation_follows_the_seed():
    rng = np.random.default_rng(4)
    p, q = rng.normal(size=(200, 3)), rng.normal(0.3, 1.0, size=(200, 3))
    fresh = torch.from_numpy(rng.normal(size=(500, 3))).float()
    options = ClassifierOptions(mlp_steps=20)
    same = [fit("mlp", p, q, options, seed=5)(fresh) for _ in range(2)]
    assert torch.equal(same[0], same[1])
    assert any(not torch.equal(same[0], fit("mlp", p, q, options, seed=s)(fresh)) for s in range(6, 10))


@pytest.mark.parametrize("name", ["linear", "quadratic", "mlp"])
def test_constant_features_and_a_degenerate_set_are_handled(name):
    rng = np.random.default_rng(6)
    p = np.zeros((300, 3))  # every row the same: covariance 0
    q = np.concatenate([rng.normal(size=(300, 2)), np.zeros((300, 1))], axis=1)  # last column constant
    estimate = estimate_tv(p, q, classifier=name, options=ClassifierOptions(mlp_steps=100))
    assert 0.0 <= estimate.tv <= 1.0


def test_unknown_class_is_refused():
    with pytest.raises(ValueError, match="classifier must be one of"):
        fit("svm", np.zeros((5, 2)), np.ones((5, 2)))


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"l2": -1.0}, ValueError),
        ({"mlp_steps": 0}, ValueError),
        ({"mlp_hidden": 2.5}, TypeError),
        ({"mlp_learning_rate": 0.0}, ValueError),
        ({"lbfgs_iterations": True}, TypeError),
    ],
)
def test_options_are_validated(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        ClassifierOptions(**kwargs)
