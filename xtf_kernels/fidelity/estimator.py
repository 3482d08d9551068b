"""Discriminative estimate of the total-variation distance between two sample sets.

With equal priors, the Bayes risk of telling P from Q is R* = (1 - TV(P, Q)) / 2. Any classifier f gives

    TV(P, Q) >= P(f = 1) - Q(f = 1) = 1 - 2 x balanced error of f,

with equality for the Bayes classifier. The estimate fits f on a training split and measures the right-hand
side on held-out rows, so it estimates a LOWER BOUND on TV: a weak hypothesis class, too little training
data or an underfitted model all make it smaller, never larger (up to held-out sampling noise, which the
interval covers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field

import torch

from .._validation import check_int
from .._validation import check_number
from .classifiers import CLASSIFIERS
from .classifiers import ClassifierOptions
from .classifiers import Decision
from .classifiers import fit_classifier
from .interval import rate_difference_interval
from .samples import SampleSet
from .samples import as_sample_matrix
from .samples import balanced_split
from .samples import check_pair

LOWER_BOUND_NOTE = "a learned classifier gives a lower bound on TV(P, Q)"


@dataclass(frozen=True)
class TVEstimate:
    """Held-out estimate of TV(P, Q), a lower bound (see the module docstring).

    tv: P(f = 1) - Q(f = 1) on the test rows, clipped to [0, 1].
    lower, upper: the ``confidence`` Newcombe binomial interval of that difference, clipped to [0, 1]. It
        covers the chosen classifier's true P(f = 1) - Q(f = 1), which is itself <= TV(P, Q).
    p_positive_rate, q_positive_rate: fraction of held-out P / Q rows the classifier labels "P".
    classifier: the hypothesis class evaluated on the test rows (the one selected on the validation rows
        when several were compared).
    n_train, n_validation, n_test: rows per set in each split (equal for P and Q; n_validation is 0 without
        model selection).
    validation_tv: hypothesis class -> P(f = 1) - Q(f = 1) on the validation rows (empty without selection).
    """

    tv: float
    lower: float
    upper: float
    confidence: float
    p_positive_rate: float
    q_positive_rate: float
    classifier: str
    n_train: int
    n_validation: int
    n_test: int
    seed: int
    validation_tv: dict[str, float] = field(default_factory=dict)

    @property
    def balanced_error(self) -> float:
        """Held-out balanced error of the classifier, (1 - (P(f = 1) - Q(f = 1))) / 2 (not clipped)."""
        return (1.0 - (self.p_positive_rate - self.q_positive_rate)) / 2.0

    def __str__(self) -> str:
        return (
            f"TV_hat = {self.tv:.3f} [{self.lower:.3f}, {self.upper:.3f}] ({self.confidence:.0%} CI, "
            f"{self.classifier} classifier, {self.n_test} held-out rows per set; {LOWER_BOUND_NOTE})"
        )

    def __repr__(self) -> str:
        return (
            f"TVEstimate(tv={self.tv:.4f}, lower={self.lower:.4f}, upper={self.upper:.4f}, "
            f"confidence={self.confidence}, classifier={self.classifier!r}, n_train={self.n_train}, "
            f"n_validation={self.n_validation}, n_test={self.n_test}, seed={self.seed}; {LOWER_BOUND_NOTE})"
        )

    def to_dict(self) -> dict:
        return {
            "tv": self.tv,
            "lower": self.lower,
            "upper": self.upper,
            "confidence": self.confidence,
            "balanced_error": self.balanced_error,
            "p_positive_rate": self.p_positive_rate,
            "q_positive_rate": self.q_positive_rate,
            "classifier": self.classifier,
            "n_train": self.n_train,
            "n_validation": self.n_validation,
            "n_test": self.n_test,
            "seed": self.seed,
            "validation_tv": dict(self.validation_tv),
            "note": LOWER_BOUND_NOTE,
        }


def resolve_classifiers(classifier: str | Sequence[str]) -> tuple[str, ...]:
    """"linear" | "quadratic" | "mlp" -> that class; "max" -> all three; a sequence -> those classes."""
    if isinstance(classifier, str):
        names = CLASSIFIERS if classifier == "max" else (classifier,)
    elif isinstance(classifier, Sequence) and len(classifier) > 0:
        names = tuple(classifier)
    else:
        raise TypeError(f"classifier must be a name or a non-empty sequence of names, got {classifier!r}")
    for name in names:
        if name not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {(*CLASSIFIERS, 'max')} or a sequence of those, got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"classifier lists a hypothesis class twice: {names}")
    return names


def estimate_tv(
    p: SampleSet,
    q: SampleSet,
    *,
    classifier: str | Sequence[str] = "linear",
    test_fraction: float = 0.3,
    validation_fraction: float = 0.2,
    confidence: float = 0.95,
    seed: int = 0,
    max_samples: int | None = None,
    options: ClassifierOptions | None = None,
) -> TVEstimate:
    """Estimate (a lower bound on) TV(P, Q) from samples, by how well a classifier tells them apart.

    Args:
        p: (n_p, d) samples of P (e.g. real data embeddings), torch.Tensor or numpy.ndarray of any real
            dtype (used as float32), on any device; the classifier runs on that device.
        q: (n_q, d) samples of Q (e.g. synthetic data embeddings), same d and device as ``p``.
        classifier: hypothesis class, "linear" (logistic regression), "quadratic" (Gaussian discriminant
            analysis), "mlp" (two hidden layers), or "max" / a sequence of names: fit each, select the one
            with the largest TV_hat on a validation split, and report the selected one on a separate test
            split (the maximum over several classes measured on the same rows would be biased upwards).
        test_fraction: share of the balanced rows held out for the reported estimate.
        validation_fraction: share used for selection; only taken when several classes are compared.
        confidence: level of the binomial interval, in (0, 1).
        seed: fixes the subsampling, the split and the MLP initialisation: same seed, inputs, device and
            thread count -> same result (the MLP's 500 optimizer steps amplify summation-order differences, so
            its estimate moves by a few hundredths across thread counts or devices).
        max_samples: cap on rows used per set (after balancing), None = all of the smaller set.
        options: :class:`ClassifierOptions` for the hypothesis classes.

    Returns:
        :class:`TVEstimate`; ``tv`` = mean_P[f = 1] - mean_Q[f = 1] on the test rows, clipped to [0, 1], with a
        Newcombe interval (see :mod:`xtf_kernels.fidelity.interval`).

    The larger set is subsampled to the size of the smaller (equal priors). Rows with NaN / inf, inputs
    that are not 2-D, sets of different d or device, and splits with fewer than 10 rows per set raise
    ValueError / TypeError naming the argument. The closed form it is tested against: for
    N(m1, S) vs N(m2, S), TV = 2 Phi(D / 2) - 1 with D the Mahalanobis distance between the means.
    """
    names = resolve_classifiers(classifier)
    selecting = len(names) > 1
    test_fraction = check_number("test_fraction", test_fraction, low=0.0, low_open=True, high=1.0)
    validation_fraction = check_number("validation_fraction", validation_fraction, low=0.0) if selecting else 0.0
    if test_fraction + validation_fraction >= 1.0:
        raise ValueError(
            f"test_fraction + validation_fraction must leave rows to train on, got {test_fraction} + "
            f"{validation_fraction} >= 1"
        )
    confidence = check_number("confidence", confidence, low=0.0, low_open=True, high=1.0)
    if confidence == 1.0:
        raise ValueError("confidence must be < 1")
    check_int("seed", seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if max_samples is not None:
        check_int("max_samples", max_samples)
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
    options = options if options is not None else ClassifierOptions()
    if not isinstance(options, ClassifierOptions):
        raise TypeError(f"options must be a ClassifierOptions, got {type(options).__name__}")

    p_rows = as_sample_matrix("p", p)
    q_rows = as_sample_matrix("q", q)
    check_pair(p_rows, q_rows)
    split = balanced_split(
        p_rows,
        q_rows,
        test_fraction=test_fraction,
        validation_fraction=validation_fraction,
        max_samples=max_samples,
        generator=torch.Generator().manual_seed(seed),
    )
    features = torch.cat([split.train_p, split.train_q])
    labels = torch.cat([torch.ones(split.n_train), torch.zeros(split.n_train)]).to(features.device)
    decisions = {
        # A fresh generator per class: the MLP's fit is the same whether it runs alone or within "max".
        name: fit_classifier(name, features, labels, options=options, generator=torch.Generator().manual_seed(seed))
        for name in names
    }

    validation_tv = {}
    if selecting:
        validation_tv = {
            name: _rates(decide, split.validation_p, split.validation_q)[0] for name, decide in decisions.items()
        }
        chosen = max(names, key=lambda name: validation_tv[name])  # ties: the first (simplest) listed class
    else:
        chosen = names[0]

    difference, p_hits, q_hits = _rates(decisions[chosen], split.test_p, split.test_q)
    lower, upper = rate_difference_interval(p_hits, split.n_test, q_hits, split.n_test, confidence)
    return TVEstimate(
        tv=min(max(difference, 0.0), 1.0),
        lower=min(max(lower, 0.0), 1.0),
        upper=min(max(upper, 0.0), 1.0),
        confidence=confidence,
        p_positive_rate=p_hits / split.n_test,
        q_positive_rate=q_hits / split.n_test,
        classifier=chosen,
        n_train=split.n_train,
        n_validation=split.n_validation,
        n_test=split.n_test,
        seed=seed,
        validation_tv=validation_tv,
    )


def _rates(decide: Decision, rows_p: torch.Tensor, rows_q: torch.Tensor) -> tuple[float, int, int]:
    """(P(f = 1) - Q(f = 1), #P rows with f = 1, #Q rows with f = 1) on the given rows."""
    p_hits = int(decide(rows_p).sum())
    q_hits = int(decide(rows_q).sum())
    return p_hits / rows_p.shape[0] - q_hits / rows_q.shape[0], p_hits, q_hits
