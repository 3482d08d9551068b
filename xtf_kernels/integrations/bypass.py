"""A loud, once-per-path warning when a model patched by ``apply_xtf_kernels`` is run around xtf_kernels.

The integrations route every training-time projection of a patched model through the fused ops; a path that
still builds the full ``[tokens x vocab]`` logits (a Trainer ``compute_loss_func``, label smoothing done by
Trainer on logits, a custom loss on ``model(...).logits``) or that leaves the computation to another
library's kernel trains correctly but silently loses what the patch promised. Each such path warns once per
process, naming itself, with :class:`XtfBypassWarning` (filter it with ``warnings.filterwarnings`` if the
bypass is intended).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings

__all__ = [
    "XtfBypassWarning", "caller_outside_libraries", "projection_is_sanctioned", "reset_warnings",
    "sanctioned_projection", "warn_bypass",
]


class XtfBypassWarning(UserWarning):
    """A patched model computed something without xtf_kernels (the message names the path and the fix)."""


_WARNED: set[str] = set()
_LOCK = threading.Lock()
_STATE = threading.local()


def warn_bypass(path: str, detail: str, *, caller: tuple[str, int, str] | None = None) -> None:
    """Warn once per process for ``path`` (a short name of the code path) and ``caller`` (file, line, function
    that took it; once per function, whatever the line), with ``detail`` saying what ran instead and how to stay
    on the fused ops."""
    key = path if caller is None else f"{path} {caller[0]} {caller[2]}"
    with _LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    where = "" if caller is None else f" (called from {caller[0]}:{caller[1]} in {caller[2]})"
    warnings.warn(f"xtf_kernels is bypassed: {path}{where}. {detail}", XtfBypassWarning, stacklevel=3)


@contextlib.contextmanager
def sanctioned_projection():
    """Marks projections of the real head that the integration itself asks for (the one-time logits check,
    logits the caller asked for explicitly), so the head's bypass detector stays quiet inside."""
    _STATE.depth = getattr(_STATE, "depth", 0) + 1
    try:
        yield
    finally:
        _STATE.depth -= 1


def projection_is_sanctioned() -> bool:
    """True inside :class:`sanctioned_projection` on this thread."""
    return getattr(_STATE, "depth", 0) > 0


# Frames from these packages are skipped when naming the code that ran a bypass path.
_LIBRARY_DIRS = tuple(
    os.sep + os.path.join(*parts) + os.sep
    for parts in (("torch",), ("transformers", "models"), ("transformers", "utils"), ("xtf_kernels", "integrations"),
                  ("accelerate",), ("peft",))
)


def caller_outside_libraries() -> tuple[str, int, str] | None:
    """(file name, line, function) of the innermost frame outside torch / transformers' model code /
    accelerate / peft / this package: the trainer method or user code that made the call."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not any(part in filename for part in _LIBRARY_DIRS):
            return os.path.basename(filename), frame.f_lineno, frame.f_code.co_name
        frame = frame.f_back
    return None


def reset_warnings() -> None:
    """Forget which paths have warned, so each warns again once (e.g. between experiments in one process)."""
    with _LOCK:
        _WARNED.clear()
