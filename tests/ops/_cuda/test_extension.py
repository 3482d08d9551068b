"""xtf_kernels/ops/_cuda/extension.py: lazy loading, and reasons that say what is missing and how to fix it."""

from __future__ import annotations

import pytest
import torch

from xtf_kernels.ops._cuda import extension as ext


@pytest.fixture
def missing_extension(monkeypatch):
    """The extension module as if it had never been built."""
    real_import = ext.importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name == "xtf_kernels._C":
            raise ModuleNotFoundError("No module named 'xtf_kernels._C'")
        return real_import(name, *args, **kwargs)

    ext._load.cache_clear()
    monkeypatch.setattr(ext.importlib, "import_module", fake_import)
    yield
    ext._load.cache_clear()


def test_missing_extension_says_how_to_build_it(missing_extension):
    reason = ext.extension_unavailable_reason()
    assert "xtf_kernels._C is not built in this install" in reason
    assert "XTF_BUILD_CUDA=1 pip install ." in reason and "csrc/build_wheels.sh" in reason
    assert ext.extension_unavailable_reason(torch.device("cpu")) == reason
    with pytest.raises(ImportError, match="not built in this install"):
        ext.extension()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a CUDA device")
def test_cuda_device_without_a_gpu_is_explained(monkeypatch):
    monkeypatch.setattr(ext, "_load", lambda: (object(), None))  # an extension that imports
    assert ext.extension_unavailable_reason() is None
    assert "torch sees no CUDA device" in ext.extension_unavailable_reason(torch.device("cuda"))


def test_format_cuda_version():
    assert ext.format_cuda_version(13000) == "13.0"
    assert ext.format_cuda_version(12080) == "12.8"
    assert ext.format_cuda_version(0) is None


def test_old_driver_is_explained():
    reason = ext.explain_device_error(
        "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version",
        runtime=13000, driver=12040, capability=(9, 0), archs=[800, 900], index=0,
    )
    assert "driver supports CUDA 12.4 but xtf_kernels._C was built with CUDA 13.0" in reason
    assert "cudaErrorInsufficientDriver" in reason


def test_no_driver_is_explained():
    reason = ext.explain_device_error("cudaErrorInsufficientDriver: ...", runtime=13000, driver=0,
                                      capability=(9, 0), archs=[900], index=0)
    assert "driver supports CUDA none" in reason


def test_missing_architecture_is_explained_with_the_rebuild_command():
    reason = ext.explain_device_error(
        "cudaErrorNoKernelImageForDevice: no kernel image is available for execution on the device",
        runtime=13000, driver=13000, capability=(7, 5), archs=[800, 900], index=1,
    )
    assert "no kernel for cuda:1 (compute capability 7.5; built for [80, 90])" in reason
    assert "XTF_CUDA_ARCHS=75 XTF_BUILD_CUDA=1 pip install ." in reason


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_extension_runs_on_this_gpu():
    """On the GPU machine the extension must be built (csrc/gpu_check.sh does it) and hold this GPU's arch."""
    assert ext.extension_unavailable_reason(torch.device("cuda")) is None
    module = ext.extension()
    assert module.cuda_driver_version() >= module.cuda_runtime_version()
