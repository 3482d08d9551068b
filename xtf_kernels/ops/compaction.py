"""Drop ignored / zero-weight rows before any matmul, so time and memory scale with the tokens kept.

Two modes:

- :func:`compact_rows` (the default): knowing how many rows survive is the one host synchronisation per
  op call (one small device-to-host copy of three counters; the number of GEMMs launched depends on it).
  The same copy carries the data checks that need the values (targets in range, weights finite and
  non-negative), so validation costs no extra synchronisation. Inside a ``torch.library`` custom op this
  sync does not break a ``torch.compile`` graph, but it makes CUDA-graph capture fail.
- :func:`static_rows` (``max_kept_tokens=K``): no host synchronisation at all, for CUDA graphs and
  ``torch.compile(mode="reduce-overhead")``. The op always processes ``min(K, N)`` rows, a number known
  from the shapes: with K >= N every row runs and dropped rows are masked in place (no gather, no
  scatter); with K < N the kept rows are gathered with ``torch.nonzero_static`` into K slots, the unused
  slots masked. A masked row runs with a zero hidden state, target 0 and zero upstream gradient, so its
  logits gradient is ``p * 0 + 0`` = exactly 0 and it adds exactly nothing to d_hidden, d_weight and
  d_bias (zeroing its hidden state keeps a non-finite padding row from making ``0 * inf`` = NaN there).
  The checks that would need the host become device-side poison instead of a ValueError: see
  :func:`static_rows`.
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
    # Static mode only (see :func:`static_rows`): which of the ``kept`` processed rows are real kept rows
    # ((kept,) bool), their number (0-d int64, on the device), and the (total,) bool rows whose outputs are
    # poisoned with NaN.
    row_mask: torch.Tensor | None = None
    count: torch.Tensor | None = None
    poison: torch.Tensor | None = None

    def _moves(self, x: torch.Tensor) -> bool:
        return self.mover is not None and x.is_cuda

    def gather(self, x: torch.Tensor | None, fill: float = 0) -> torch.Tensor | None:
        """x[kept rows] (no copy when every row is kept); in static mode ``fill`` at the masked slots."""
        if x is None:
            return x
        if self.row_mask is not None:
            rows = x if self.index is None else x.index_select(0, self.index.clamp_max(self.total - 1))
            mask = self.row_mask.view(-1, *([1] * (x.dim() - 1)))
            return torch.where(mask, rows, torch.full((), fill, dtype=x.dtype, device=x.device))
        if self.index is None:
            return x
        if self._moves(x):
            return self.mover.gather_rows(x, self.index)
        return x.index_select(0, self.index)

    def scatter(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(M, ...) -> (N, ...) with ``fill`` at dropped rows."""
        if self.row_mask is not None:
            if self.index is None:
                mask = self.row_mask.view(-1, *([1] * (values.dim() - 1)))
                return torch.where(mask, values, torch.full((), fill, dtype=values.dtype, device=values.device))
            # The unused slots hold index ``total``: they land in one extra row, cut off.
            out = values.new_full((self.total + 1, *values.shape[1:]), fill)
            return out.index_copy_(0, self.index, values)[: self.total]
        if self.index is None:
            return values
        if self._moves(values):
            return self.mover.scatter_rows(values, self.index, self.total, fill)
        out = values.new_full((self.total, *values.shape[1:]), fill)
        return out.index_copy_(0, self.index, values)

    def poisoned(self, values: torch.Tensor) -> torch.Tensor:
        """(N,) float values with NaN at the poisoned rows (static mode; unchanged otherwise)."""
        if self.poison is None:
            return values
        return torch.where(self.poison, torch.full((), float("nan"), dtype=values.dtype, device=values.device),
                           values)


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


def static_rows(
    targets: torch.Tensor,
    row_weights: torch.Tensor | None,
    ignore_index: int,
    vocab: int,
    max_kept: int,
    *,
    validate: bool = True,
    class_weights: torch.Tensor | None = None,
) -> Compaction:
    """The rows to process without any host synchronisation: ``min(max_kept, N)`` of them, a static number.

    Kept rows are those of :func:`compact_rows` (targets != ignore_index, row_weights != 0), and always
    only those with a target in [0, vocab), so no gather can go out of range.

    Device-side checks instead of ValueErrors (nothing raises; the outputs say it), with ``validate``:
    a target outside [0, vocab) that is not ignore_index, or a negative / non-finite row weight, makes that
    row's outputs NaN and the row gets no gradient; a negative / non-finite class weight, or more kept rows
    than ``max_kept`` (the surplus would be silently lost), makes every row's outputs NaN. Without
    ``validate`` (the recomputing backward, whose row weights are upstream gradients of any sign) nothing
    is poisoned.

    Args:
        targets: (N,) int64.
        row_weights: (N,) float or None.
        max_kept: K >= 1, the static bound on kept rows.
        class_weights: (V,) float or None (checked only).

    Returns:
        A :class:`Compaction` with ``kept`` = min(K, N) processed rows, ``row_mask`` / ``count`` /
        ``poison`` set; ``index`` is None when K >= N (every row processed, masked in place).
    """
    total = targets.shape[0]
    in_range = (targets >= 0) & (targets < vocab)
    keep = (targets != ignore_index) & in_range
    poison = None
    if validate:
        poison = (targets != ignore_index) & ~in_range
    if row_weights is not None:
        keep = keep & (row_weights != 0)
        if validate:
            bad_weight = ~torch.isfinite(row_weights) | (row_weights < 0)
            keep = keep & ~bad_weight
            poison = poison | bad_weight
    count = keep.sum()
    slots = min(max_kept, total)
    if validate:
        poison_all = count > slots
        if class_weights is not None:
            poison_all = poison_all | (~torch.isfinite(class_weights) | (class_weights < 0)).any()
        poison = poison | poison_all
    if slots >= total:
        return Compaction(None, total, total, None, keep, count, poison)
    # Unused slots get index ``total`` (one past the end): masked on gather, cut off on scatter.
    index = torch.nonzero_static(keep, size=slots, fill_value=total).squeeze(1)
    return Compaction(index, slots, total, None, index < total, count, poison)
