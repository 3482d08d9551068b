"""The one place that lists backends. Adding a backend is one entry in ``_BACKENDS``.

A backend is a module exposing

    head_pass(hidden, weight, bias, targets, spec, **options) -> HeadPassResult
        (the contract of :func:`xtf_kernels.ops.engine.chunked_head_pass`; rows already compacted; the
        keywords are the fields of :class:`~xtf_kernels.ops.spec.HeadPassRequest`, which the backend builds
        once and hands to the chunked driver or its own path)

and optionally

    influence_delta(base, ref, targets, spec, chunk_size) -> (M,) fp32 logp_ref - logp_base
        (a fused two-model pass; without it two ``head_pass`` calls are made).

and declares ``features: frozenset[str]``, the options of the op contract beyond the common core that it
implements, a subset of :data:`FEATURES` (a module without the attribute implements none of them).

``availability(device)`` returns None when the backend can run on that device, else one sentence saying
what is missing and how to get it; ``resolve_backend`` turns that sentence into a
:class:`~xtf_kernels.errors.BackendUnavailableError`. ``backend="auto"`` also skips backends that lack a
feature the call needs; an explicit backend that lacks one raises the same error, naming the feature and a
backend that has it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from ..errors import BackendUnavailableError


def _torch_available(device: torch.device) -> str | None:
    return None


def _triton_available(device: torch.device) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "the 'triton' package is not installed; `pip install 'xtf_kernels[triton]'` (Linux only)"
    if device.type == "cuda":
        return None
    # TRITON_INTERPRET=1 runs Triton kernels on CPU tensors, one program at a time (tests only).
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return (
        f"Triton kernels need a CUDA device (got {device.type}); on CPU they run only under "
        "TRITON_INTERPRET=1, which is for tests"
    )


def _cuda_available(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"the CUDA extension needs CUDA tensors (got {device.type})"
    from ._cuda.extension import extension_unavailable_reason

    return extension_unavailable_reason(device)


@dataclass(frozen=True)
class Backend:
    name: str
    module: str
    availability: Callable[[torch.device], str | None]

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


_BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend("torch", "xtf_kernels.ops._torch.backend", _torch_available),
        Backend("triton", "xtf_kernels.ops._triton.backend", _triton_available),
        Backend("cuda", "xtf_kernels.ops._cuda.backend", _cuda_available),
    )
}

# backend="auto" tries these in order for the device type and takes the first available one.
_AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("triton", "cuda", "torch"),
}
_AUTO_DEFAULT: tuple[str, ...] = ("torch",)

BACKEND_NAMES: tuple[str, ...] = ("auto", *_BACKENDS)

# Options a call may need beyond the common core: logit_scale != 1, class weights, the argmax (predicted
# tokens / token accuracy), float64 inputs.
FEATURES: frozenset[str] = frozenset({"logit_scale", "class_weights", "argmax", "float64"})


def check_backend_name(backend: str) -> None:
    """Raise ValueError naming the argument if ``backend`` is not a known name."""
    if not isinstance(backend, str) or backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")


# Under torch.compile the import cannot be traced; the declared set is a constant of the backend, so dynamo
# calls this eagerly and bakes the result into the graph.
@torch.compiler.assume_constant_result
def backend_features(name: str) -> frozenset[str]:
    """The features a concrete backend declares (imports its module; call only where it is available)."""
    return frozenset(getattr(_BACKENDS[name].load(), "features", frozenset()))


def _missing(name: str, needs: frozenset[str]) -> list[str]:
    return sorted(needs - backend_features(name)) if needs else []


def _declares(name: str, needs: frozenset[str]) -> bool:
    """Whether backend ``name`` declares ``needs``, False when its module cannot even be imported here."""
    try:
        return not _missing(name, needs)
    except ImportError:
        return False


def resolve_backend(backend: str, device: torch.device, needs: frozenset[str] = frozenset()) -> str:
    """The concrete backend name for ``backend`` on ``device``; raises if it cannot run there.

    needs: features of :data:`FEATURES` the call uses; "auto" skips backends lacking any of them (the torch
    backend has them all), an explicit backend lacking one raises BackendUnavailableError.
    """
    check_backend_name(backend)
    unknown = set(needs) - FEATURES
    if unknown:
        raise ValueError(f"unknown backend feature(s) {sorted(unknown)}; known: {sorted(FEATURES)}")
    if backend == "auto":
        for name in _AUTO_ORDER.get(device.type, _AUTO_DEFAULT):
            if _BACKENDS[name].availability(device) is None and not _missing(name, needs):
                return name
        return "torch"
    reason = _BACKENDS[backend].availability(device)
    if reason is not None:
        raise BackendUnavailableError(backend, reason)
    missing = _missing(backend, needs)
    if missing:
        others = [name for name in _BACKENDS if name != backend and _declares(name, frozenset(missing))]
        raise BackendUnavailableError(
            backend,
            f"it does not implement {', '.join(missing)} yet; backend={others[0]!r} does",
        )
    return backend


# Loaded backend modules by module path: after the first call, ``get_backend`` is a dict lookup that
# torch.compile can trace through (it cannot trace ``importlib.import_module``), so the ops' own
# implementations can be traced whole (tests/test_functional_sync_free.py).
_LOADED: dict[str, ModuleType] = {}


def get_backend(name: str) -> ModuleType:
    """The implementation module of a concrete (already resolved) backend."""
    backend = _BACKENDS[name]
    module = _LOADED.get(backend.module)
    if module is None:
        module = _LOADED[backend.module] = backend.load()
    return module


def availability_report(device: torch.device) -> dict[str, str | None]:
    """{backend name: None if available on ``device`` else the reason}, for ``xtf env``."""
    return {name: backend.availability(device) for name, backend in _BACKENDS.items()}
