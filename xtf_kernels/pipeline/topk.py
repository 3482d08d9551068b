"""The pool-wide top k of a score over the shards on disk, exact, with the work split across ranks.

The same radix selection as :class:`xtf_kernels.select.StreamingTopK` (same order-preserving integer keys,
same 16-bit digits, same walk from the best bin), except that each rank histograms only its share of the
shards and the histograms are summed with one all-reduce per pass: counts add up, so the threshold is the
one a single process computes over every shard. fp32 scores take two passes of 2^16 int64 bins (512 KiB
all-reduced per pass), plus one pass counting, per shard, the entries tied with the threshold.

Ties are kept in pool order: the first ``ties`` entries equal to the threshold, counting shard by shard in
sample order, whichever rank scored them. The manifest records ``ties_before[i]`` (entries equal to the
threshold in shards before i), so :class:`~xtf_kernels.pipeline.ScoreResult` decides any shard alone, at read
time, exactly as :func:`xtf_kernels.select.topk_mask` decides on the whole pool in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from collections.abc import Iterable

import numpy as np
import torch

from .. import select
from . import store
from .distributed import Group

DIGITS = 16
WIDTH = 32  # shards hold fp32 scores

Chunks = Callable[[], Iterable[tuple[int, torch.Tensor]]]  # fresh iterator of (shard index, (T,) fp32 scores)


def _keys(scores: torch.Tensor, largest: bool) -> torch.Tensor:
    keys, width = select.order_keys(scores.float())
    if width != WIDTH:
        raise TypeError(f"shard scores must be float32, got {scores.dtype}")
    return keys if largest else ~keys


def _histogram(group: Group, chunks: Chunks, largest: bool, prefix: int | None, level: int) -> tuple[int, np.ndarray]:
    """(valid entries of the whole pool, summed histogram of the next digit below ``level`` of the keys
    that start with ``prefix`` (the top digit, signed and biased to >= 0, when ``prefix`` is None))."""
    digits = min(DIGITS, level)
    hist = torch.zeros(1 << digits, dtype=torch.int64)
    total = torch.zeros(1, dtype=torch.int64)
    for _, scores in chunks():
        valid = ~torch.isnan(scores)
        keys = _keys(scores[valid], largest)
        total += keys.numel()
        if prefix is None:
            digit = (keys >> (level - digits)) + (1 << (digits - 1))
        else:
            keys = keys[(keys >> level) == prefix]
            digit = (keys >> (level - digits)) & ((1 << digits) - 1)
        hist.index_add_(0, digit, torch.ones_like(digit))
    summed = group.all_reduce_sum(torch.cat([total, hist]))
    return int(summed[0]), summed[1:].numpy()


def global_threshold(group: Group, chunks: Chunks, k: float, largest: bool) -> select.TopKThreshold:
    """The :class:`~xtf_kernels.select.TopKThreshold` keeping floor(k N) of the N non-NaN scores of every
    rank's chunks together (every rank returns the same)."""
    total, hist = _histogram(group, chunks, largest, None, WIDTH)
    keep = select.keep_count(k, total)
    if keep == 0:
        return select.TopKThreshold(math.nan, 0, 0, total, largest)
    need, prefix, remaining = keep, None, WIDTH
    while True:
        digits = min(DIGITS, remaining)
        if prefix is not None:
            seen, hist = _histogram(group, chunks, largest, prefix, remaining)
            if seen != total:
                raise ValueError(f"the shards changed between passes: {total} scored tokens, then {seen}")
        above = np.cumsum(hist[::-1])[::-1] - hist  # entries in better bins
        digit = int(np.flatnonzero((above < need) & (above + hist >= need))[0])
        need -= int(above[digit])
        prefix = digit - (1 << (digits - 1)) if prefix is None else (prefix << digits) + digit
        remaining -= digits
        if remaining == 0:
            key = prefix if largest else ~prefix
            return select.TopKThreshold(select.key_to_value(key, WIDTH), need, keep, total, largest)


def global_topk(group: Group, chunks: Chunks, num_shards: int, spec) -> dict:
    """The manifest's ``global_topk`` record for ``spec`` (a :class:`~xtf_kernels.methods.GlobalTopK`)."""
    threshold = global_threshold(group, chunks, spec.k, spec.largest)
    ties = torch.zeros(num_shards, dtype=torch.int64)
    if threshold.keep:
        for index, scores in chunks():
            ties[index] = int((scores == threshold.value).sum())  # NaN never equals the threshold
    ties = group.all_reduce_sum(ties)
    ties_before = (torch.cumsum(ties, 0) - ties).tolist()
    return {"score": spec.score, "k": spec.k, "largest": spec.largest, "rule": spec.rule,
            "value": store.json_float(threshold.value), "ties": threshold.ties, "keep": threshold.keep,
            "total": threshold.total, "ties_before": ties_before}
