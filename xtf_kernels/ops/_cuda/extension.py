"""Loads the compiled extension lazily and says why it cannot be used when it is missing."""

from __future__ import annotations

import functools
import importlib


@functools.lru_cache(maxsize=1)
def _load():
    try:
        return importlib.import_module("xtf_kernels._C"), None
    except ImportError as exc:
        return None, (
            "the compiled extension xtf_kernels._C is not built in this install "
            f"({exc}); reinstall on a machine with nvcc: `XTF_BUILD_CUDA=1 pip install .` "
            "or install a CUDA wheel (README, 'Wheels for GPU clusters')"
        )


def extension_unavailable_reason() -> str | None:
    """None when the extension imports, else why not and how to build it."""
    _module, reason = _load()
    return reason


def extension():
    """The imported extension module (call only after ``extension_unavailable_reason()`` is None)."""
    module, reason = _load()
    if module is None:
        raise ImportError(reason)
    return module
