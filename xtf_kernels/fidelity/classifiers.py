"""The hypothesis classes the auditor fits to tell P (label 1) from Q (label 0).

Each ``fit`` takes training rows ``features`` (n, d) float32 and ``labels`` (n,) float32 in {0, 1} (equal
counts of each) and returns a decision function mapping rows (m, d) to a bool (m,) tensor, True = "looks
like P". Every class first standardises the features with the training mean and standard deviation
(computed in float64, so embeddings with large values do not overflow), then:

- ``linear``: L2-regularised logistic regression, fitted to convergence with L-BFGS from a zero start (a
  convex problem, so the fit is deterministic and does not depend on the seed). Threshold: logit 0.
- ``quadratic``: Gaussian discriminant analysis (QDA): one mean and one covariance per set, each
  covariance shrunk towards a scaled identity with the Ledoit-Wolf (2004) intensity so it stays invertible
  when n is not much larger than d; decide P where log N(x; m_P, S_P) > log N(x; m_Q, S_Q). This is the
  Bayes rule when P and Q are Gaussian, and scales to d in the thousands, where logistic regression on the
  d(d + 1)/2 quadratic features would not.
- ``mlp``: two hidden ReLU layers, AdamW on minibatches for a fixed number of steps with a cosine learning
  rate; initialised and shuffled from the seed's generator.

All run on the device of ``features``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._validation import check_int
from .._validation import check_number

CLASSIFIERS = ("linear", "quadratic", "mlp")

Decision = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ClassifierOptions:
    """Knobs of the hypothesis classes (defaults used by :func:`~xtf_kernels.fidelity.estimate_tv`).

    l2: logistic-regression penalty 0.5 * l2 * ||w||^2 added to the mean log-loss (standardised features);
        1e-3 barely shrinks a well-posed fit and keeps a separable one finite.
    lbfgs_iterations: L-BFGS iteration cap of the logistic fit.
    mlp_hidden: width of both hidden layers.
    mlp_steps: optimizer steps (independent of n, so the cost grows only with the batch size).
    mlp_batch_size: rows per step.
    mlp_learning_rate: AdamW peak learning rate (cosine decay to 0 over mlp_steps).
    mlp_weight_decay: AdamW weight decay.
    """

    l2: float = 1e-3
    lbfgs_iterations: int = 200
    mlp_hidden: int = 64
    mlp_steps: int = 500
    mlp_batch_size: int = 256
    mlp_learning_rate: float = 3e-3
    mlp_weight_decay: float = 1e-4

    def __post_init__(self):
        check_number("l2", self.l2, low=0.0)
        check_number("mlp_learning_rate", self.mlp_learning_rate, low=0.0, low_open=True)
        check_number("mlp_weight_decay", self.mlp_weight_decay, low=0.0)
        for name in ("lbfgs_iterations", "mlp_hidden", "mlp_steps", "mlp_batch_size"):
            value = getattr(self, name)
            check_int(name, value)
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")


def fit_classifier(
    name: str,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    options: ClassifierOptions,
    generator: torch.Generator,
) -> Decision:
    """Fit hypothesis class ``name`` on features (n, d) float32 / labels (n,) float32; see the module doc."""
    mean = features.double().mean(dim=0)
    std = features.double().std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant feature carries no information

    def standardise(x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - mean) / std).float()

    # The fits need autograd even when the caller is inside torch.no_grad() / torch.inference_mode(); a clone
    # made outside inference mode turns an inference tensor into an ordinary one that autograd may save.
    with torch.inference_mode(False), torch.enable_grad():
        train = standardise(features.clone())
        labels = labels.clone()
        if name == "linear":
            score = _fit_logistic(train, labels, options)
        elif name == "quadratic":
            score = _fit_gaussian_discriminant(train, labels)
        elif name == "mlp":
            score = _fit_mlp(train, labels, options, generator)
        else:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {name!r}")

    def decide(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return score(standardise(x)) > 0

    return decide


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, options: ClassifierOptions) -> Callable:
    d = x.shape[1]
    params = torch.zeros(d + 1, dtype=torch.float32, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [params],
        lr=1.0,
        max_iter=options.lbfgs_iterations,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        logits = x @ params[:d] + params[d]
        loss = F.binary_cross_entropy_with_logits(logits, y) + 0.5 * options.l2 * params[:d].square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight, bias = params[:d].detach(), params[d].detach()
    return lambda z: z @ weight + bias


def _ledoit_wolf_covariance(x: torch.Tensor) -> torch.Tensor:
    """x (n, d) float64 -> (d, d) covariance (1 - s) S + s (tr S / d) I, s the Ledoit-Wolf intensity.

    S = X^T X / n of the centred rows. s = min(b2, d2) / d2 with d2 = ||S - mu I||_F^2 / d (the dispersion
    around the target) and b2 = sum_k ||x_k x_k^T - S||_F^2 / (n^2 d) (the sampling noise of S).
    """
    n, d = x.shape
    centred = x - x.mean(dim=0)
    sample_cov = centred.T @ centred / n
    mu = torch.diagonal(sample_cov).sum() / d
    identity = torch.eye(d, dtype=x.dtype, device=x.device)
    dispersion = (sample_cov - mu * identity).square().sum() / d
    # sum_k ||x_k x_k^T||_F^2 = sum_k ||x_k||^4; cross terms collapse since sum_k x_k x_k^T = n S.
    noise = ((centred.square().sum(dim=1).square().sum() / n - sample_cov.square().sum()) / (n * d)).clamp(min=0)
    shrinkage = 0.0 if dispersion <= 0 else float(torch.clamp(noise / dispersion, max=1.0))
    return (1.0 - shrinkage) * sample_cov + shrinkage * mu * identity


def _gaussian_log_density(x: torch.Tensor) -> Callable:
    mean = x.mean(dim=0)
    covariance = _ledoit_wolf_covariance(x)
    # A set with all rows equal has S = 0; a tiny ridge keeps the Cholesky factor defined.
    covariance = covariance + 1e-9 * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    chol = torch.linalg.cholesky(covariance)
    half_log_det = torch.log(torch.diagonal(chol)).sum()

    def log_density(z: torch.Tensor) -> torch.Tensor:
        white = torch.linalg.solve_triangular(chol, (z - mean).T, upper=False)
        return -0.5 * white.square().sum(dim=0) - half_log_det

    return log_density


def _fit_gaussian_discriminant(x: torch.Tensor, y: torch.Tensor) -> Callable:
    x = x.detach().double()
    log_p = _gaussian_log_density(x[y == 1])
    log_q = _gaussian_log_density(x[y == 0])
    return lambda z: log_p(z.double()) - log_q(z.double())


def _fit_mlp(x: torch.Tensor, y: torch.Tensor, options: ClassifierOptions, generator: torch.Generator) -> Callable:
    n, d = x.shape
    widths = (d, options.mlp_hidden, options.mlp_hidden, 1)
    params = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        bound = 1.0 / math.sqrt(fan_in)  # the uniform range torch.nn.Linear uses
        for shape in ((fan_out, fan_in), (fan_out,)):
            init = (torch.rand(shape, generator=generator) * 2 - 1) * bound
            params.append(init.to(x.device).requires_grad_())

    def forward(z: torch.Tensor) -> torch.Tensor:
        for i in range(0, len(params) - 2, 2):
            z = F.relu(F.linear(z, params[i], params[i + 1]))
        return F.linear(z, params[-2], params[-1]).squeeze(1)

    optimizer = torch.optim.AdamW(params, lr=options.mlp_learning_rate, weight_decay=options.mlp_weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.mlp_steps)
    batch = min(options.mlp_batch_size, n)
    order = torch.randperm(n, generator=generator)
    cursor = 0
    for _ in range(options.mlp_steps):
        if cursor + batch > n:  # next epoch: reshuffle
            order, cursor = torch.randperm(n, generator=generator), 0
        rows = order[cursor : cursor + batch].to(x.device)
        cursor += batch
        loss = F.binary_cross_entropy_with_logits(forward(x[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    for param in params:
        param.requires_grad_(False)
    return forward
