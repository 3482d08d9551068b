"""Fixtures of the Triton kernel tests: which tier may run them here.

interpret-marked tests run the kernels on CPU tensors and need TRITON_INTERPRET=1 set before Triton is
imported (their own pytest invocation, see tests/run.sh); cuda-marked tests need a GPU and the compiled
(non-interpreted) kernels.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.fixture(scope="session")
def triton_interpret():
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    if not INTERPRET:
        pytest.skip("Triton interpreter tier: run with TRITON_INTERPRET=1")


@pytest.fixture(scope="session")
def triton_cuda():
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    if INTERPRET or not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and the compiled kernels (TRITON_INTERPRET unset)")
