"""xtf_kernels itself, one provider per backend (and per Triton path).

fwd_bwd / frozen time ``linear_cross_entropy`` (mean, dropped tokens through ``token_weights`` = 0);
fwd times ``token_logprobs`` under no_grad (dropped tokens through ``ignore_index``, its only mask).
The Triton backend's path is chosen by the environment variable XTF_TRITON_PATH (fused | chunked),
set in the worker process before the backend is imported.
"""

from __future__ import annotations

import importlib.util

import torch

from ...errors import BackendUnavailableError
from ...ops.registry import resolve_backend
from ..cases import Case
from ..inputs import IGNORE_INDEX
from ..inputs import BenchInputs
from .base import Provider
from .base import Step
from .base import Unavailable
from .base import training_step

_BACKEND_MODULES = {
    "torch": "xtf_kernels.ops._torch.backend",
    "triton": "xtf_kernels.ops._triton.backend",
    "cuda": "xtf_kernels.ops._cuda.backend",
}


def _checker(backend: str):
    def check(device: torch.device, case: Case) -> Unavailable | None:
        try:
            module = _BACKEND_MODULES[resolve_backend(backend, device)]
        except BackendUnavailableError as exc:
            return Unavailable("missing", exc.reason)
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing too
            found = False
        return None if found else Unavailable("missing", f"{module} is not part of this build")

    return check


def _builder(backend: str):
    def build(inputs: BenchInputs, case: Case) -> Step:
        from ... import functional

        if case.mode == "fwd":
            targets = inputs.targets_ignored

            def forward() -> torch.Tensor:
                return functional.token_logprobs(
                    inputs.hidden, inputs.weight, targets, softcap=case.softcap, ignore_index=IGNORE_INDEX,
                    backend=backend,
                )
        else:

            def forward() -> torch.Tensor:
                return functional.linear_cross_entropy(
                    inputs.hidden, inputs.weight, inputs.targets, token_weights=inputs.token_weights,
                    softcap=case.softcap, backend=backend,
                )

        return training_step(inputs, case, forward)

    return build


def xtf_providers() -> list[Provider]:
    return [
        Provider("xtf-auto", "xtf", "backend=auto (the default)", "xtf_kernels", _checker("auto"), _builder("auto")),
        Provider("xtf-torch", "xtf", "torch (default chunking)", "xtf_kernels", _checker("torch"), _builder("torch")),
        Provider(
            "xtf-triton-fused", "xtf", "triton XTF_TRITON_PATH=fused", "xtf_kernels", _checker("triton"),
            _builder("triton"), env=(("XTF_TRITON_PATH", "fused"),),
        ),
        Provider(
            "xtf-triton-chunked", "xtf", "triton XTF_TRITON_PATH=chunked", "xtf_kernels", _checker("triton"),
            _builder("triton"), env=(("XTF_TRITON_PATH", "chunked"),),
        ),
        Provider("xtf-cuda", "xtf", "cuda extension", "xtf_kernels", _checker("cuda"), _builder("cuda")),
    ]
