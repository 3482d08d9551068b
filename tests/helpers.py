"""Helpers shared by the tests: per-dtype tolerances and a scale-aware comparison."""

from __future__ import annotations

import torch

# Per-dtype tolerances (atol, rtol) for fp32 outputs compared with the float64 reference. Low-precision
# inputs are upcast for the reference, so the error is the fp32 accumulation plus, for gradients, the
# rounding of d_logits to the input dtype before the backward matmuls.
TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=2e-4),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.5e-2, rtol=1.5e-2),
}
GRAD_TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=2e-4),
    torch.float16: dict(atol=5e-3, rtol=5e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
}


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
