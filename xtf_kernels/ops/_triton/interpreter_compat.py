"""Keep the Triton interpreter (TRITON_INTERPRET=1, the CPU test tier) working with NumPy >= 2.4.

The interpreter holds every scalar as a shape-(1,) array and converts it to a Python int with
``int(array)``, which NumPy 2.4 turned from a deprecation into a TypeError. Any kernel loop whose bounds
are runtime values (``range(0, vocab, BLOCK)``) then fails under the interpreter with "only 0-dimensional
arrays can be converted to Python scalars" (triton-lang/triton#9171, present in Triton 3.6). The patch
below is the upstream fix: the same conversion through a reshape. It touches only the interpreter, is
applied only when NumPy raises on that conversion, and never runs on the compiled GPU path.
"""

from __future__ import annotations

import numpy as np


def _numpy_rejects_sized_scalars() -> bool:
    try:
        int(np.ones(1, dtype=np.int32))
    except TypeError:
        return True
    return False


def patch_scalar_index() -> None:
    """Make the interpreter's ``tensor.__index__`` read the single element explicitly (idempotent)."""
    if not _numpy_rejects_sized_scalars():
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "xtf_scalar_index", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch_lang_tensor.xtf_scalar_index = True
    interpreter._patch_lang_tensor = patch_lang_tensor
