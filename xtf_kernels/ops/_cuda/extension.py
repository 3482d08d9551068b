"""Loads the compiled extension lazily and says why it cannot be used when it is missing.

``xtf_kernels._C`` is built from csrc/ by setup.py. It links the CUDA runtime statically and not the
driver, so it imports on any Linux machine; whether its kernels can run is a per-device question (the
driver must support the runtime it was built with, and it must hold machine code or PTX for the GPU's
architecture), answered once per device by :func:`extension_unavailable_reason`.
"""

from __future__ import annotations

import functools
import importlib

import torch

_HOW_TO_BUILD = (
    "reinstall on a machine with nvcc: `XTF_BUILD_CUDA=1 pip install .`, or install a CUDA wheel built by "
    "csrc/build_wheels.sh"
)


@functools.lru_cache(maxsize=1)
def _load():
    try:
        return importlib.import_module("xtf_kernels._C"), None
    except ImportError as exc:
        return None, f"the compiled extension xtf_kernels._C is not built in this install ({exc}); {_HOW_TO_BUILD}"


def format_cuda_version(encoded: int) -> str | None:
    """13000 -> "13.0" (the CUDA runtime's encoding: 1000 * major + 10 * minor); 0 (no driver) -> None."""
    return f"{encoded // 1000}.{encoded % 1000 // 10}" if encoded > 0 else None


def explain_device_error(error: str, *, runtime: int, driver: int, capability: tuple[int, int], archs: list[int],
                         index: int) -> str:
    """The sentence for a device the kernels cannot run on, from what the extension reports.

    error: the CUDA error of ``device_support(index)``; runtime / driver: CUDA versions as the runtime
    encodes them (13000 = 13.0; driver 0 = no driver); archs: ``compiled_archs()`` (e.g. [800, 900]).
    """
    if driver < runtime:
        return (
            f"the NVIDIA driver supports CUDA {format_cuda_version(driver) or 'none'} but xtf_kernels._C was built "
            f"with CUDA {format_cuda_version(runtime)} ({error}); install or update the NVIDIA driver, or build the "
            f"extension with an older CUDA toolkit"
        )
    major, minor = capability
    return (
        f"xtf_kernels._C has no kernel for cuda:{index} (compute capability {major}.{minor}; built for "
        f"{[arch // 10 for arch in archs]}) ({error}); rebuild for it: "
        f"`XTF_CUDA_ARCHS={major}{minor} XTF_BUILD_CUDA=1 pip install .`"
    )


@functools.cache
def _device_reason(index: int) -> str | None:
    module = extension()
    with torch.cuda.device(index):  # torch's current device is restored on exit
        error = module.device_support(index)
    if not error:
        return None
    return explain_device_error(
        error, runtime=module.cuda_runtime_version(), driver=module.cuda_driver_version(),
        capability=torch.cuda.get_device_capability(index), archs=module.compiled_archs(), index=index,
    )


def extension_unavailable_reason(device: torch.device | None = None) -> str | None:
    """None when the extension imports (and, given a CUDA ``device``, can run there), else why not and how to fix it."""
    _module, reason = _load()
    if reason is not None or device is None or device.type != "cuda":
        return reason
    if not torch.cuda.is_available():
        return f"torch sees no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})"
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _device_reason(index)


def extension():
    """The imported extension module (call only after ``extension_unavailable_reason()`` is None)."""
    module, reason = _load()
    if module is None:
        raise ImportError(reason)
    return module
