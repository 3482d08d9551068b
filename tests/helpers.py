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


def assert_predictions(predicted, logits, kept, ignore_index: int, msg: str = "predicted tokens"):
    """An op's argmax against float64 logits: ignore_index where not kept; elsewhere a maximal index up to fp32
    rounding of the logits (a softcap saturating in fp32 makes genuine fp32 ties that float64 separates),
    and exactly the float64 argmax where the top two differ by more than that rounding."""
    predicted, logits, kept = predicted.cpu(), logits.detach().double().cpu(), kept.cpu()
    assert predicted.dtype == torch.int64 and predicted.shape == kept.shape, msg
    assert torch.all(predicted[~kept] == ignore_index), f"{msg}: not ignore_index at dropped positions"
    rows, chosen = logits[kept], predicted[kept]
    if not rows.numel():
        return
    slack = 1e-6 * max(rows.abs().max().item(), 1.0)
    top2 = rows.topk(min(2, rows.shape[-1]), dim=-1).values
    picked = rows.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
    assert torch.all(picked >= top2[:, 0] - slack), f"{msg}: an index that is not maximal"
    unique = top2[:, 0] - top2[:, -1] > slack if top2.shape[-1] > 1 else torch.ones_like(picked, dtype=torch.bool)
    assert torch.equal(chosen[unique], rows.argmax(-1)[unique]), f"{msg}: not the unique float64 argmax"
