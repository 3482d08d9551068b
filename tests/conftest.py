"""Device tiers and the backend fixture shared by every op test.

``impl`` is parametrised over (backend, device) pairs, each carrying its tier marker:
    torch-cpu          marker cpu        (the default CPU invocation)
    triton-interpret   marker interpret  (run with TRITON_INTERPRET=1, in its own invocation)
    {torch,triton,cuda}-cuda  marker cuda (a GPU machine: `python -m pytest -m cuda`)
so a new backend passes the same tests by appearing here.
"""

from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None


class Impl(NamedTuple):
    backend: str
    device: str

    @property
    def interpret(self) -> bool:
        return self.device == "cpu" and self.backend == "triton"

    @property
    def dtypes(self) -> tuple[torch.dtype, ...]:
        """Input dtypes this implementation is tested in (the interpreter has no bf16 arithmetic)."""
        if self.interpret:
            return (torch.float32, torch.float16)
        return (torch.float32, torch.bfloat16, torch.float16)


IMPLS = [
    pytest.param(Impl("torch", "cpu"), marks=pytest.mark.cpu, id="torch-cpu"),
    pytest.param(Impl("triton", "cpu"), marks=pytest.mark.interpret, id="triton-interpret"),
    *(pytest.param(Impl(b, "cuda"), marks=pytest.mark.cuda, id=f"{b}-cuda") for b in ("torch", "triton", "cuda")),
]


@pytest.fixture(params=IMPLS)
def impl(request) -> Impl:
    impl = request.param
    if impl.interpret and not (INTERPRET and HAS_TRITON):
        pytest.skip("Triton interpreter tier: run with TRITON_INTERPRET=1 and triton installed")
    if impl.device == "cuda" and not HAS_CUDA:
        pytest.skip("no CUDA device")
    return impl


def pytest_collection_modifyitems(config, items):
    """Tests without a tier marker are cpu-tier; interpret-tier tests skip outside the interpreter run."""
    for item in items:
        if not any(item.get_closest_marker(m) for m in ("cpu", "interpret", "cuda")):
            item.add_marker(pytest.mark.cpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
