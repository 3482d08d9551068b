"""The implementations the GPU checks run: every backend and Triton path available on the target."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from xtf_kernels.errors import BackendUnavailableError
from xtf_kernels.ops.registry import resolve_backend


class Path(NamedTuple):
    """One way of running an op: ``backend=`` and, for Triton, XTF_TRITON_PATH."""

    name: str
    backend: str
    triton_path: str | None = None


PATHS = (
    Path("auto", "auto"),
    Path("torch", "torch"),
    Path("triton-chunked", "triton", "chunked"),
    Path("triton-fused", "triton", "fused"),
    Path("cuda", "cuda"),
)
PATH_IDS = [p.name for p in PATHS]


def use_path(path: Path, device: torch.device, monkeypatch) -> None:
    """Select ``path`` for the calls that follow (XTF_TRITON_PATH), or skip saying why it cannot run here.

    In the CPU rehearsal only the torch backend runs (and "auto", which is torch there); Triton under its
    interpreter is the interpret tier's business, not this one's.
    """
    try:
        resolved = resolve_backend(path.backend, device)
    except BackendUnavailableError as exc:
        pytest.skip(f"{path.name}: {exc}")
    if device.type == "cpu" and resolved != "torch":
        pytest.skip(f"{path.name}: the CPU rehearsal runs the torch backend only")
    if path.triton_path is None:
        monkeypatch.delenv("XTF_TRITON_PATH", raising=False)
    else:
        monkeypatch.setenv("XTF_TRITON_PATH", path.triton_path)
    for name in ("XTF_CHUNK_SIZE", "XTF_CHUNK_MEMORY_MB"):
        monkeypatch.delenv(name, raising=False)
