"""Checks and balanced splits of the two sample sets the auditor compares.

A sample set is a torch.Tensor or numpy.ndarray of shape (n, d): one row per sample (an embedding, a
flattened image, a feature vector). Rows are converted to float32 on the input's device; a row with a NaN
or inf (also a float64 value beyond the float32 range) is refused, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SampleSet = torch.Tensor | np.ndarray

# Fewest rows per set in each split: below this the held-out rates are a handful of coin flips and the
# binomial interval spans most of [0, 1].
MIN_ROWS_PER_SPLIT = 10


def as_sample_matrix(name: str, samples: SampleSet) -> torch.Tensor:
    """``samples`` (n, d), any real dtype -> a float32 (n, d) tensor on the same device, all rows finite."""
    if isinstance(samples, np.ndarray):
        if samples.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got a numpy array of dtype {samples.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(samples))
    elif isinstance(samples, torch.Tensor):
        if samples.is_complex():
            raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {samples.dtype}")
        tensor = samples.detach()
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray of shape (n, d), got {type(samples).__name__}")
    if tensor.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (n samples, d features), got shape {tuple(tensor.shape)}; "
            "flatten images with x.reshape(len(x), -1), a single feature with x.reshape(-1, 1)"
        )
    if tensor.shape[1] == 0:
        raise ValueError(f"{name} has no features: shape {tuple(tensor.shape)}")
    tensor = tensor.to(torch.float32)
    bad_rows = (~torch.isfinite(tensor)).any(dim=1).nonzero().flatten()
    if bad_rows.numel():
        first = bad_rows[:5].tolist()
        raise ValueError(
            f"{name} has {bad_rows.numel()} row(s) with NaN or inf values (first rows: {first}; float64 values "
            "beyond the float32 range count as inf); drop or repair them before comparing"
        )
    return tensor


def check_pair(p: torch.Tensor, q: torch.Tensor, *, p_name: str = "p", q_name: str = "q") -> None:
    """Two checked sample matrices must share the feature dimension and the device."""
    if p.shape[1] != q.shape[1]:
        raise ValueError(
            f"{p_name} and {q_name} must have the same number of features: {p_name} is {tuple(p.shape)}, "
            f"{q_name} is {tuple(q.shape)}"
        )
    if p.device != q.device:
        raise ValueError(f"{p_name} is on {p.device} but {q_name} is on {q.device}; move both to one device")


@dataclass(frozen=True)
class BalancedSplit:
    """Equal numbers of rows of P and Q in each part; P rows are labelled 1, Q rows 0.

    train_* (n_train, d), validation_* (n_validation, d) (n_validation may be 0), test_* (n_test, d).
    """

    train_p: torch.Tensor
    train_q: torch.Tensor
    validation_p: torch.Tensor
    validation_q: torch.Tensor
    test_p: torch.Tensor
    test_q: torch.Tensor

    @property
    def n_train(self) -> int:
        return self.train_p.shape[0]

    @property
    def n_validation(self) -> int:
        return self.validation_p.shape[0]

    @property
    def n_test(self) -> int:
        return self.test_p.shape[0]


def balanced_split(
    p: torch.Tensor,
    q: torch.Tensor,
    *,
    test_fraction: float,
    validation_fraction: float,
    max_samples: int | None,
    generator: torch.Generator,
) -> BalancedSplit:
    """Shuffle each set, keep n = min(n_p, n_q, max_samples) rows of each, cut them train / validation / test.

    Subsampling the larger set to the size of the smaller makes the priors equal, which is what turns the
    Bayes risk into (1 - TV) / 2. ``generator`` (CPU) drives both shuffles, so a seed fixes the split.
    """
    n = min(p.shape[0], q.shape[0], max_samples if max_samples is not None else p.shape[0])
    n_test = round(n * test_fraction)
    n_validation = round(n * validation_fraction)
    n_train = n - n_test - n_validation
    parts = {"train": n_train, "test": n_test}
    if validation_fraction > 0:
        parts["validation"] = n_validation
    if min(parts.values()) < MIN_ROWS_PER_SPLIT:
        sizes = ", ".join(f"{k}={v}" for k, v in parts.items())
        raise ValueError(
            f"too few samples: each split needs at least {MIN_ROWS_PER_SPLIT} rows per set, got {sizes} from "
            f"n_p={p.shape[0]}, n_q={q.shape[0]}"
            + (f", max_samples={max_samples}" if max_samples is not None else "")
            + f" (test_fraction={test_fraction}, validation_fraction={validation_fraction})"
        )

    def shuffled(x: torch.Tensor) -> torch.Tensor:
        order = torch.randperm(x.shape[0], generator=generator)[:n]
        return x[order.to(x.device)]

    p, q = shuffled(p), shuffled(q)
    cuts = (n_train, n_train + n_validation)
    return BalancedSplit(
        train_p=p[: cuts[0]],
        train_q=q[: cuts[0]],
        validation_p=p[cuts[0] : cuts[1]],
        validation_q=q[cuts[0] : cuts[1]],
        test_p=p[cuts[1] :],
        test_q=q[cuts[1] :],
    )
