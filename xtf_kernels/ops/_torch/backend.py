"""The torch backend: the shared chunked driver with the PyTorch row math."""

from __future__ import annotations

from ..engine import RowKernel
from ..engine import chunked_head_pass
from ..spec import HeadPassRequest
from .row_pass import extra_row_buffers
from .row_pass import row_pass

ROW_KERNEL = RowKernel(run=row_pass, extra_buffers=extra_row_buffers)

# Every option of the op contract (see ops/registry.py); the row math is dtype-generic, so float64 inputs
# run in float64 throughout.
features = frozenset({"logit_scale", "class_weights", "argmax", "float64"})


def head_pass(hidden, weight, bias, targets, spec, **options):
    """See :func:`xtf_kernels.ops.engine.chunked_head_pass`; ``options`` are the fields of
    :class:`~xtf_kernels.ops.spec.HeadPassRequest`."""
    return chunked_head_pass(ROW_KERNEL, hidden, weight, bias, targets, spec, HeadPassRequest(**options))
