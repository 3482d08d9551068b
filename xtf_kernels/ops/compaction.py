"""Drop ignored / zero-weight rows before any matmul, so time and memory scale with the tokens kept.

Knowing how many rows survive is the one host synchronisation per op call (one small device-to-host
copy of three counters; the number of GEMMs launched depends on it). The same copy carries the data
checks that need the values (targets in range, weights finite and non-negative), so validation costs
no extra synchronisation. Inside a ``torch.library`` custom op this sync does not break a
``torch.compile`` graph.
"""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple

import torch


class Compaction(NamedTuple):
    """index: (M,) int64 positions of kept rows, or None when all N rows are kept.

    mover: a backend module with its own row-copy kernels, ``gather_rows(x, index)`` and
    ``scatter_rows(values, index, total, fill)`` (the CUDA extension's), used for tensors on its device;
    otherwise ``index_select`` / ``index_copy_``.
    """

    index: torch.Tensor | None
    kept: int
    total: int
    mover: ModuleType | None = None

    def _moves(self, x: torch.Tensor) -> bool:
        return self.mover is not None and x.is_cuda

    def gather(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """x[kept rows] (no copy when every row is kept)."""
        if x is None or self.index is None:
            return x
        if self._moves(x):
            return self.mover.gather_rows(x, self.index)
        return x.index_select(0, self.index)

    def scatter(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(M, ...) -> (N, ...) with ``fill`` at dropped rows."""
        if self.index is None:
            return values
        if self._moves(values):
            return self.mover.scatter_rows(values, self.index, self.total, fill)
        out = values.new_full((self.total, *values.shape[1:]), fill)
        return out.index_copy_(0, self.index, values)


def _first_position(mask: torch.Tensor) -> int:
    return int(mask.nonzero()[0, 0])


def compact_rows(
    targets: torch.Tensor,
    row_weights: torch.Tensor | None,
    ignore_index: int,
    vocab: int,
    *,
    validate: bool = True,
    mover: ModuleType | None = None,
    class_weights: torch.Tensor | None = None,
) -> Compaction:
    """Kept rows: targets != ignore_index and (when given) row_weights != 0.

    Args:
        targets: (N,) int64.
        row_weights: (N,) fp32 or None.
        validate: raise ValueError naming the argument on targets outside [0, vocab) that are not
            ignore_index, and on negative or non-finite weights.
        mover: see :class:`Compaction`; a module without ``gather_rows`` is ignored.
        class_weights: (V,) float or None, checked finite and >= 0 in the same sync (with ``validate``).
    """
    if mover is not None and not hasattr(mover, "gather_rows"):
        mover = None
    total = targets.shape[0]
    keep = targets != ignore_index
    counters = [keep.sum()]
    if validate:
        bad_target = keep & ((targets < 0) | (targets >= vocab))
        counters.append(bad_target.sum())
        if row_weights is not None:
            bad_weight = ~torch.isfinite(row_weights) | (row_weights < 0)
            counters.append(bad_weight.sum())
        if class_weights is not None:
            bad_class = ~torch.isfinite(class_weights) | (class_weights < 0)
            counters.append(bad_class.sum())
    if row_weights is not None:
        keep = keep & (row_weights != 0)
        counters[0] = keep.sum()
    counts = torch.stack(counters).tolist()  # the one host sync
    if validate and counts[1]:
        pos = _first_position(bad_target)
        raise ValueError(
            f"targets has {counts[1]} value(s) outside [0, {vocab}) that are not ignore_index={ignore_index} "
            f"(first: {int(targets[pos])} at flat position {pos}); vocab size V={vocab} comes from weight.shape[0]"
        )
    if validate and row_weights is not None and counts[2]:
        pos = _first_position(bad_weight)
        raise ValueError(
            f"token_weights must be finite and >= 0; found {counts[2]} bad value(s) "
            f"(first: {float(row_weights[pos])} at flat position {pos})"
        )
    if validate and class_weights is not None and counts[-1]:
        pos = _first_position(bad_class)
        raise ValueError(
            f"class_weights must be finite and >= 0; found {counts[-1]} bad value(s) "
            f"(first: {float(class_weights[pos])} at class {pos})"
        )
    kept = counts[0]
    if kept == total:
        return Compaction(None, kept, total, mover)
    index = torch.nonzero_static(keep, size=kept).squeeze(1)
    return Compaction(index, kept, total, mover)
