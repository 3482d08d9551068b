"""What a provider is: one implementation of the fused head loss that the benchmark can time.

A provider says whether it can run a case on a device (``check``: None, or an :class:`Unavailable` with
the reason, so a missing peer is reported, never silently skipped) and builds a ``step`` for given
inputs: one forward (+ backward) of the case's mode, returning the output tensor (detached).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..cases import Case
from ..inputs import BenchInputs

Step = Callable[[], torch.Tensor]


class Unavailable(NamedTuple):
    """Why a provider does not run a case: status "missing" (not installed / not runnable on this device)
    or "unsupported" (installed, but lacks an option the case needs)."""

    status: str
    reason: str


@dataclass(frozen=True)
class Provider:
    """One implementation under test.

    name: unique key ("xtf-torch", "liger", ...); family: "xtf" or "peer" (ratios are taken to the best
    peer); path: which variant runs (recorded with every row); package: the distribution whose version
    is recorded; env: environment variables the worker process sets before importing anything.
    """

    name: str
    family: str
    path: str
    package: str | None
    check: Callable[[torch.device, Case], Unavailable | None]
    build: Callable[[BenchInputs, Case], Step]
    env: tuple[tuple[str, str], ...] = ()


def training_step(inputs: BenchInputs, case: Case, forward: Callable[[], torch.Tensor]) -> Step:
    """fwd: ``forward()`` under no_grad; fwd_bwd / frozen: clear grads, ``forward().backward()``.

    Gradients are reset to None before every step (as ``triton.testing.do_bench(grad_to_none=...)``
    does), so each step allocates its own gradients and the peak memory counts them.
    """
    if case.mode == "fwd":

        def step() -> torch.Tensor:
            with torch.no_grad():
                return forward()

        return step

    def step() -> torch.Tensor:
        inputs.clear_grads()
        loss = forward()
        loss.backward()
        return loss.detach()

    return step


def needs_cuda(device: torch.device, what: str) -> Unavailable | None:
    if device.type != "cuda":
        return Unavailable("missing", f"{what} needs a CUDA device (this run is on {device.type})")
    return None


def needs_module(module: str, install: str) -> Unavailable | None:
    """Missing unless ``module`` imports; the reason names the import error and how to install."""
    if importlib.util.find_spec(module) is None:
        return Unavailable("missing", f"'{module}' is not installed ({install})")
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure makes the peer unusable here
        return Unavailable("missing", f"'{module}' fails to import: {type(exc).__name__}: {exc}")
    return None
