"""Typed errors raised by xtf_kernels.

Every error that a user can fix names what is missing and how to get it, so a CPU-only install
fails at first use of a GPU backend with a readable message rather than at import time.
"""


class XtfError(Exception):
    """Base class of every error raised on purpose by xtf_kernels."""


class BackendUnavailableError(XtfError, RuntimeError):
    """A requested backend cannot run here (missing package, extension not built, wrong device).

    Attributes:
        backend: the backend name that was asked for ("triton", "cuda", ...).
        reason: one sentence saying what is missing and how to get it.
    """

    def __init__(self, backend: str, reason: str):
        self.backend = backend
        self.reason = reason
        super().__init__(f"backend={backend!r} is not available: {reason}")


class UnsupportedModelError(XtfError, TypeError):
    """A model whose structure does not let the fused loss reproduce its own loss (says what and why)."""


class FingerprintMismatchError(XtfError, ValueError):
    """Masks or scores were computed for different data or a different config than they are applied to."""


class CorruptFileError(XtfError, ValueError):
    """A file written by xtf_kernels failed validation on read (truncated, wrong schema, bad checksum)."""


class DropCapExceededError(XtfError, RuntimeError):
    """A token filter drops a larger fraction of the response tokens than ``Safeguards.max_total_drop`` allows
    (with ``on_exceed="error"``); the message gives the fraction, the counts and the cap."""


class RunLockedError(XtfError, RuntimeError):
    """Another run holds a scoring results folder (its lock file names the host, pid and start time); see
    :mod:`xtf_kernels.pipeline.lock`. Also importable from :mod:`xtf_kernels.pipeline`."""
