"""Helpers shared by the tests: per-dtype tolerances and a scale-aware comparison."""

from __future__ import annotations

import torch

# Per-dtype tolerances (atol, rtol) for fp32 outputs compared with the float64 reference. Low-precision
# inputs are upcast for the reference, so the error is the fp32 accumulation plus, for gradients, the
# rounding of d_logits to the input dtype before the backward matmuls.
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.float32: dict(atol=2e-5, rtol=2e-4),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.5e-2, rtol=1.5e-2),
}
GRAD_TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.float32: dict(atol=2e-5, rtol=2e-4),
    torch.float16: dict(atol=5e-3, rtol=5e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
}


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The tolerance class of the ops' fp32 outputs (loss, log-probs, lse, ...) for inputs of ``dtype``.

    Logits, log-sum-exp and per-token outputs are accumulated in fp32 for 16-bit inputs on every backend,
    and the reference upcasts the same 16-bit values, so those outputs are held to fp32 tolerance (a 16-bit
    rounding of the logits shows as ~1e-2 error at H 256); only gradients, stored in the input dtype, get
    16-bit tolerances.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def assert_close(actual, expected, dtype=torch.float32, *, grad=False, msg="", floor=1e-3):
    """|actual - expected| <= atol * max|expected| + rtol * |expected|, elementwise.

    The absolute part scales with the largest reference value, so gradients of any magnitude (mean
    over many tokens, or sum) are held to the same relative standard. ``floor`` bounds that scale from
    below, for references that are exactly zero through cancellation of O(1) terms.
    """
    tol = (GRAD_TOLERANCES if grad else TOLERANCES)[dtype]
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max(expected.abs().max().item(), floor) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual, expected, atol=tol["atol"] * scale, rtol=tol["rtol"], msg=lambda m: f"{msg}\n{m}"
    )


def backend_features(backend: str) -> frozenset[str]:
    """The features a test backend declares (ops/registry.py), e.g. to skip or expect the typed error."""
    from xtf_kernels.ops.registry import backend_features as declared

    return declared(backend)


def option_features(options: dict, *, dtype: torch.dtype = torch.float32, outputs: bool = False) -> set[str]:
    """The backend features a test's options need (keys as in the functional tests' OPTIONS)."""
    needed = set()
    if options.get("class_weights") is not None and options.get("class_weights") is not False:
        needed.add("class_weights")
    if options.get("logit_scale", 1.0) != 1.0:
        needed.add("logit_scale")
    if outputs:
        needed.add("argmax")
    if dtype == torch.float64:
        needed.add("float64")
    return needed
