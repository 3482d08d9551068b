"""Device resolution of the demo (the run itself is tested end to end in tests/cli/test_demo_cli.py)."""

from __future__ import annotations

import pytest
import torch

from xtf_kernels.demo.run import resolve_device


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_names_the_option():
    with pytest.raises(ValueError, match="--device cuda: no CUDA device is available"):
        resolve_device("cuda")


def test_unknown_device():
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'cuda', got 'tpu'"):
        resolve_device("tpu")
