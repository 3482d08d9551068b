"""Selection over per-token scores: exact top-k masks (in memory and streaming), the per-sample quantile
fence, probability thresholds, Multi-Otsu thresholds and mask algebra.

These are primitive 4 of ``methods.md`` ("cheap statistics over scores") and the selection rules of its
methods:

- :func:`topk_mask`: Token Cleaning's global / per-sample top k (section 2) and RHO-1's batch top k
  (section 3), exactly ``floor(k * n)`` kept per group with deterministic ties.
- :class:`StreamingTopK` / :func:`streaming_threshold`: the same global top k over a pool too big for
  memory (section 2, "at 10^8 tokens the threshold must come from a streaming/histogram selection").
- :func:`order_keys` / :func:`key_to_value`: the order-preserving integer keys that selection histograms,
  public so that other selections over the same keys (the scoring pipeline's top k across ranks,
  :mod:`xtf_kernels.pipeline.topk`) decide exactly as :class:`StreamingTopK` does.
- :func:`quantile_fence`: XTF's reasoning-importance rule ``S < q1 - c (q3 - q1)`` per sample (section 1).
- :func:`probability_mask`: XTF's knowledge-novelty rule ``PCP > 0.95`` (section 1).
- :func:`multi_otsu` / :func:`otsu_class`: XTF's task-relevance rule (section 1).
- :func:`union` / :func:`intersection`: combining rules (XTF drops a token when ANY rule fires).

Every mask is a bool tensor shaped like the scores; ``True`` means "selected" for :func:`topk_mask` and
"noisy" for the rule helpers, as their docstrings say.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import torch

SCOPES = ("global", "sample", "batch")

# ----------------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------------


def _check_float_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _check_mask(name: str, mask, like: torch.Tensor, like_name: str) -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got {mask.dtype}")
    if mask.shape != like.shape:
        raise ValueError(f"{name} shape {tuple(mask.shape)} must equal {like_name} shape {tuple(like.shape)}")
    if mask.device != like.device:
        raise ValueError(f"{name} is on {mask.device} but {like_name} is on {like.device}")


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def _check_int(name: str, value, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _valid_or_all(valid, scores: torch.Tensor) -> torch.Tensor:
    if valid is None:
        return torch.ones_like(scores, dtype=torch.bool)
    _check_mask("valid", valid, scores, "scores")
    return valid


def _reject_nan(scores: torch.Tensor, valid: torch.Tensor, name: str = "scores") -> None:
    bad = int((torch.isnan(scores) & valid).sum())
    if bad:
        raise ValueError(f"{name} has {bad} NaN value(s) at valid positions; mask them out with valid=")


# ----------------------------------------------------------------------------------------------------------
# exact top k in memory
# ----------------------------------------------------------------------------------------------------------


def keep_count(k: float, n: int) -> int:
    """floor(k * n), the number of entries a top-``k`` fraction of ``n`` keeps.

    ``k`` is read as its shortest decimal representation (``repr``), so 0.29 of 100 tokens keeps 29, not
    the 28 that binary floating point gives (``0.29 * 100 == 28.999999999999996``).
    """
    k = _check_fraction("k", k)
    _check_int("n", n, low=0)
    fraction = Fraction(repr(k))
    return fraction.numerator * n // fraction.denominator


def _group_ids(scores: torch.Tensor, scope: str, sample_ids) -> torch.Tensor | None:
    """(N,) int64 group of every flat position, or None for one global group."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if sample_ids is not None and scope != "sample":
        raise ValueError(f"sample_ids is only used with scope='sample', got scope={scope!r}")
    if scope == "global":
        return None
    flat_positions = torch.arange(scores.numel(), device=scores.device)
    if scope == "batch":
        if scores.dim() < 2:
            raise ValueError(
                f"scope='batch' needs scores of shape (batches, ...) with at least 2 dims, got {tuple(scores.shape)}"
            )
        return flat_positions // max(scores[0].numel(), 1)
    if sample_ids is not None:
        if not isinstance(sample_ids, torch.Tensor):
            raise TypeError(f"sample_ids must be a torch.Tensor, got {type(sample_ids).__name__}")
        if sample_ids.is_floating_point() or sample_ids.is_complex() or sample_ids.dtype == torch.bool:
            raise TypeError(f"sample_ids must be an integer tensor, got {sample_ids.dtype}")
        if sample_ids.shape != scores.shape:
            raise ValueError(
                f"sample_ids shape {tuple(sample_ids.shape)} must equal scores shape {tuple(scores.shape)}"
            )
        return torch.unique(sample_ids.reshape(-1).to(scores.device), return_inverse=True)[1]
    if scores.dim() < 2:
        raise ValueError(
            "scope='sample' needs scores of shape (..., L) (one sample per row) or sample_ids=, got scores of "
            f"shape {tuple(scores.shape)}"
        )
    return flat_positions // max(scores.shape[-1], 1)


def topk_mask(
    scores: torch.Tensor,
    k: float,
    *,
    valid: torch.Tensor | None = None,
    scope: str = "global",
    sample_ids: torch.Tensor | None = None,
    largest: bool = True,
) -> torch.Tensor:
    """Keep exactly ``floor(k * n)`` of the ``n`` valid entries of every group, the best-scored ones.

    Groups (``scope``):
        "global": one group, every valid entry of ``scores`` (Token Cleaning's pool-wide top k; RHO-1's
            batch top k when ``scores`` is one training batch).
        "sample": one group per sample: each row ``scores[..., :]`` of a (..., L) tensor, or, when
            ``sample_ids`` is given (packed sequences), each set of entries sharing a sample id.
        "batch": one group per index of the leading dimension: ``scores[b]`` for a (batches, ...) tensor
            holding several batches stacked (e.g. (batches, batch_size, L)).

    Ties are broken deterministically: among equal scores the lower flat index (row-major position in
    ``scores``) is kept first. ``-0.0`` and ``0.0`` are equal. The count per group is
    :func:`keep_count` ``(k, n_group)``.

    Args:
        scores: (...) float tensor, any float dtype and device. NaN at a valid position is an error.
        k: fraction in [0, 1].
        valid: (...) bool, True where the entry may be selected (e.g. response tokens); None = all.
        scope: "global", "sample" or "batch" (above).
        sample_ids: (...) integer sample id per entry, only with ``scope="sample"``.
        largest: keep the largest scores (True) or the smallest (False).

    Returns:
        (...) bool, True at kept entries; never True where ``valid`` is False. An empty ``scores``
        gives an empty mask.
    """
    _check_float_tensor("scores", scores)
    k = _check_fraction("k", k)
    valid = _valid_or_all(valid, scores)
    groups = _group_ids(scores, scope, sample_ids)
    _reject_nan(scores, valid)

    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    positions = valid.reshape(-1).nonzero().squeeze(1)  # ascending flat positions of the valid entries
    if positions.numel() == 0:
        return mask.reshape(scores.shape)
    values = scores.reshape(-1)[positions]
    # Stable sorts keep ascending flat positions among equal keys: first by score, then (stably) by group.
    order = torch.sort(values, descending=largest, stable=True).indices
    if groups is None:
        kept = order[: keep_count(k, positions.numel())]
    else:
        group_of_valid = groups[positions]
        order = order[torch.sort(group_of_valid[order], stable=True).indices]
        sorted_groups = group_of_valid[order]
        sizes = torch.bincount(group_of_valid)
        starts = torch.cumsum(sizes, 0) - sizes
        rank = torch.arange(order.numel(), device=order.device) - starts[sorted_groups]
        kept = order[rank < _keep_counts(k, sizes)[sorted_groups]]
    mask[positions[kept]] = True
    return mask.reshape(scores.shape)


def _keep_counts(k: float, sizes: torch.Tensor) -> torch.Tensor:
    """:func:`keep_count` for every group size (exact integer arithmetic on the distinct sizes)."""
    distinct, inverse = torch.unique(sizes, return_inverse=True)
    counts = [keep_count(k, n) for n in distinct.tolist()]
    return torch.tensor(counts, dtype=torch.int64, device=sizes.device)[inverse]


# ----------------------------------------------------------------------------------------------------------
# exact global top k over a stream of chunks (radix selection on order-preserving bit patterns)
# ----------------------------------------------------------------------------------------------------------

_MAX_BITS_PER_PASS = 20  # a 2^20-bin int64 histogram is 8 MiB


def order_keys(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Order-preserving integer keys of floats: what radix selection histograms.

    Args:
        values: (...) float64, float32, bfloat16 or float16 (any shape), no NaN (a NaN gets a key, but an
            arbitrary one: mask NaNs out first).

    Returns:
        (keys, width): keys (...) int64 with ``keys[i] < keys[j]`` iff ``values[i] < values[j]`` and equal
        keys iff equal values (-0.0 and 0.0 map to one key, that of 0.0); ``width`` 64 for float64 (keys
        span the signed 64-bit range) and 32 otherwise (keys in the signed 32-bit range: fp16 / bf16 are
        widened to fp32 first, exactly). :func:`key_to_value` inverts it.

    Why it works: IEEE floats of one sign order like their bit patterns read as integers; negative ones in
    reverse, so their 31 (63) non-sign bits are flipped. ``~keys`` reverses the order and stays in the same
    range, which is how a "smallest k" selection reuses the "largest k" walk.
    """
    values = values + 0.0  # -0.0 + 0.0 == +0.0 in IEEE arithmetic
    if values.dtype == torch.float64:
        bits, flip, width = values.view(torch.int64), 0x7FFF_FFFF_FFFF_FFFF, 64
    else:
        bits, flip, width = values.float().view(torch.int32).long(), 0x7FFF_FFFF, 32
    return torch.where(bits < 0, bits ^ flip, bits), width


def key_to_value(key: int, width: int) -> float:
    """The float whose :func:`order_keys` key of width ``width`` (32 or 64) is ``key``, as a Python float
    (a float32 value for width 32, exactly representable)."""
    if width not in (32, 64):
        raise ValueError(f"width must be 32 or 64, got {width!r}")
    bits = key ^ (0x7FFF_FFFF if width == 32 else 0x7FFF_FFFF_FFFF_FFFF) if key < 0 else key
    dtype, int_dtype = (torch.float32, torch.int32) if width == 32 else (torch.float64, torch.int64)
    return torch.tensor(bits, dtype=int_dtype).view(dtype).item()


class TopKThreshold(NamedTuple):
    """The result of a streaming top-k selection.

    An entry is kept iff it is valid and (it scores strictly better than ``value``, or it equals ``value``
    and is among the first ``ties`` valid entries equal to ``value`` in arrival order, i.e. chunk order
    then row-major order within a chunk). That keeps exactly ``keep`` entries, the same ones as
    :func:`topk_mask` with ``scope="global"`` on the concatenated chunks.

    value: the keep-th best score (a Python float, exact for the chunks' dtype); NaN when keep == 0.
    ties: how many entries equal to ``value`` are kept.
    keep: floor(k * total).
    total: number of valid entries in the stream.
    largest: whether the largest (True) or smallest scores are kept.
    """

    value: float
    ties: int
    keep: int
    total: int
    largest: bool

    def masker(self) -> ThresholdMasker:
        """A fresh :class:`ThresholdMasker` that turns the chunks, in the same order, into masks."""
        return ThresholdMasker(self)


class ThresholdMasker:
    """Applies a :class:`TopKThreshold` to the chunks in arrival order (it counts the ties it has kept)."""

    def __init__(self, threshold: TopKThreshold):
        self.threshold = threshold
        self._ties_left = threshold.ties

    def __call__(self, scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """scores (...) float, valid (...) bool or None -> (...) bool, True at kept entries."""
        _check_float_tensor("scores", scores)
        valid = _valid_or_all(valid, scores)
        value = self.threshold.value
        better = scores > value if self.threshold.largest else scores < value
        equal = (scores == value) & valid
        keep = valid & better
        if self._ties_left and bool(equal.any()):
            tie_rank = torch.cumsum(equal.reshape(-1).long(), 0).reshape(scores.shape)
            keep |= equal & (tie_rank <= self._ties_left)
            self._ties_left -= min(self._ties_left, int(equal.sum()))
        return keep


ChunkSource = Callable[[], Iterable] | Iterable


class StreamingTopK:
    """Exact global top-``k`` over a stream of score chunks that need not fit in memory together.

    Radix selection: scores are mapped to integer keys with the same order (their IEEE bit patterns
    with the negative ones flipped) and each pass histograms the next ``bits_per_pass`` bits of the keys
    that share the prefix found so far, until the whole key of the ``keep``-th best score is known.

    Cost: ``ceil(32 / bits_per_pass)`` passes over the chunks for fp32 / fp16 / bf16 scores (2 at the
    default 16 bits), ``ceil(64 / bits_per_pass)`` for fp64 (4); the first pass also counts the valid
    entries. Memory: one ``2**bits_per_pass``-bin int64 histogram (512 KiB at 16 bits) on the chunks'
    device, plus per chunk an int64 key per score; nothing proportional to the pool. One host sync per
    pass (plus one per chunk that holds entries tied with the threshold, when masking).

    Chunks: ``chunks`` is either a zero-argument callable returning a fresh iterable of chunks, or a
    re-iterable collection (a list, a dataset view); a one-shot iterator or generator is refused since the
    stream is read several times. Every chunk is a float tensor of any shape (all entries valid) or a
    ``(scores, valid)`` pair with ``valid`` a bool tensor of the same shape. Every pass must see the same
    chunks in the same order.

    Example::

        selector = StreamingTopK(0.6)
        threshold = selector.threshold(lambda: (shard.scores for shard in shards))
        masker = threshold.masker()
        masks = [masker(shard.scores) for shard in shards]
    """

    def __init__(self, k: float, *, largest: bool = True, bits_per_pass: int = 16):
        self.k = _check_fraction("k", k)
        self.largest = bool(largest)
        self.bits_per_pass = _check_int("bits_per_pass", bits_per_pass, low=1)
        if bits_per_pass > _MAX_BITS_PER_PASS:
            raise ValueError(f"bits_per_pass must be <= {_MAX_BITS_PER_PASS}, got {bits_per_pass}")

    def threshold(self, chunks: ChunkSource) -> TopKThreshold:
        """The :class:`TopKThreshold` keeping exactly ``floor(k * total)`` valid entries of the stream."""
        open_stream = _stream_opener(chunks)
        total, width, hist = self._histogram_pass(open_stream, None, None)
        keep = keep_count(self.k, total)
        if keep == 0:
            return TopKThreshold(math.nan, 0, 0, total, self.largest)
        need, prefix, remaining = keep, None, width
        while True:
            digits = min(self.bits_per_pass, remaining)
            if prefix is not None:
                seen, _, hist = self._histogram_pass(open_stream, prefix, remaining)
                if seen != total:
                    raise ValueError(f"chunks changed between passes: {total} valid entries, then {seen}")
            # Walk the bins from the best (highest key) down to the one holding the need-th best key.
            above = np.cumsum(hist[::-1])[::-1] - hist  # entries in better bins
            digit = int(np.flatnonzero((above < need) & (above + hist >= need))[0])
            need -= int(above[digit])
            top = prefix is None
            prefix = digit - (1 << (digits - 1)) if top else (prefix << digits) + digit
            remaining -= digits
            if remaining == 0:
                key = prefix if self.largest else ~prefix
                return TopKThreshold(key_to_value(key, width), need, keep, total, self.largest)

    def _histogram_pass(self, open_stream, prefix: int | None, level: int | None):
        """One pass over the stream: (valid entries, key width, int64 numpy histogram of the next digit).

        First pass (``prefix`` None): every valid key, digit = its top bits. Later passes: only keys whose
        bits above ``level`` equal ``prefix``, digit = the next bits below ``level``.
        """
        width = hist = total = nan_count = None
        for scores, valid in _chunks(open_stream()):
            keys, chunk_width = order_keys(scores)
            if not self.largest:
                keys = ~keys  # reverses the order and stays in the same signed range
            if width is None:
                width, level = chunk_width, level or chunk_width
                digits = min(self.bits_per_pass, level)
                counters = dict(dtype=torch.int64, device=scores.device)
                hist, total, nan_count = torch.zeros(1 << digits, **counters), torch.zeros((), **counters), None
            elif chunk_width != width:
                raise TypeError("every chunk must be float64, or every chunk float32 / bfloat16 / float16")
            total += valid.sum().to(hist.device)  # device counters: one host sync per pass, not per chunk
            if prefix is None:
                nan = torch.isnan(scores) & valid
                nan_count = nan.sum().to(hist.device) if nan_count is None else nan_count + nan.sum().to(hist.device)
                selected = keys[valid & ~nan]
                digit = (selected >> (level - digits)) + (1 << (digits - 1))  # signed top bits, biased to >= 0
            else:
                selected = keys[valid & ((keys >> level) == prefix)]
                digit = (selected >> (level - digits)) & ((1 << digits) - 1)
            # index_add_ of ones, not bincount(minlength=2**16), which zero-fills a fresh histogram per chunk
            hist.index_add_(0, digit.to(hist.device), torch.ones_like(digit, device=hist.device))
        if width is None:
            return 0, 32, None
        if nan_count is not None and int(nan_count):
            raise ValueError(f"chunks hold {int(nan_count)} NaN score(s) at valid positions; mask them out")
        return int(total), width, hist.cpu().numpy()

    def masks(self, chunks: ChunkSource) -> Iterator[torch.Tensor]:
        """Computes the threshold, then yields one bool mask per chunk (one more pass)."""
        open_stream = _stream_opener(chunks)
        masker = self.threshold(open_stream).masker()
        for scores, valid in _chunks(open_stream()):
            yield masker(scores, valid)


def streaming_threshold(chunks: ChunkSource, k: float, *, largest: bool = True,
                        bits_per_pass: int = 16) -> TopKThreshold:
    """``StreamingTopK(k, largest=largest, bits_per_pass=bits_per_pass).threshold(chunks)``."""
    return StreamingTopK(k, largest=largest, bits_per_pass=bits_per_pass).threshold(chunks)


def _stream_opener(chunks) -> Callable[[], Iterable]:
    if callable(chunks):
        return chunks
    if not isinstance(chunks, Iterable):
        raise TypeError(f"chunks must be a callable returning chunks or a re-iterable, got {type(chunks).__name__}")
    if iter(chunks) is chunks:
        raise TypeError(
            "chunks is a one-shot iterator (e.g. a generator) but the stream is read several times; pass a list "
            "or a zero-argument callable that returns a fresh iterator"
        )
    return lambda: chunks


def _chunks(stream: Iterable) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for index, chunk in enumerate(stream):
        if isinstance(chunk, (tuple, list)):
            if len(chunk) != 2:
                raise ValueError(f"chunk {index} must be a tensor or a (scores, valid) pair, got {len(chunk)} items")
            scores, valid = chunk
        else:
            scores, valid = chunk, None
        _check_float_tensor(f"chunk {index} scores", scores)
        if valid is None:
            valid = torch.ones_like(scores, dtype=torch.bool)
        else:
            _check_mask(f"chunk {index} valid", valid, scores, f"chunk {index} scores")
        yield scores.detach(), valid


# ----------------------------------------------------------------------------------------------------------
# XTF's rules: quantile fence, probability threshold
# ----------------------------------------------------------------------------------------------------------


def quantile_fence(scores: torch.Tensor, valid: torch.Tensor | None = None, c: float = 1.0) -> torch.Tensor:
    """Per-sample lower Tukey fence: noisy where ``score < q1 - c * (q3 - q1)`` (XTF's RI rule, methods.md 1).

    q1 and q3 are the 25th / 75th percentiles of the valid scores of each row, with linear interpolation
    between order statistics as ``torch.quantile(..., interpolation="linear")``; computed in float64.

    Args:
        scores: (..., L) float, one sample per row (the last dimension).
        valid: (..., L) bool, True at the entries that belong to the sample's scored set (response tokens);
            None = all. Rows with no valid entry get no noisy entry.
        c: fence width, a finite number >= 0 (methods.md default 1.0).

    Returns:
        (..., L) bool, True at noisy entries (always valid ones).
    """
    _check_float_tensor("scores", scores)
    if scores.dim() < 1:
        raise ValueError("scores must have at least 1 dimension (..., L), got a 0-d tensor")
    if scores.numel() == 0:
        raise ValueError(f"scores is empty (shape {tuple(scores.shape)})")
    valid = _valid_or_all(valid, scores)
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0:
        raise ValueError(f"c must be a finite number >= 0, got {c!r}")
    bad = int((~torch.isfinite(scores) & valid).sum())
    if bad:
        raise ValueError(f"scores has {bad} non-finite value(s) at valid positions")
    values = scores.double()
    # Invalid entries sort last as +inf; the first n entries of every row are its valid scores, ascending.
    ordered = torch.where(valid, values, torch.full_like(values, math.inf)).sort(-1).values
    counts = valid.sum(-1, keepdim=True)
    last = (counts - 1).clamp(min=0).double()

    def quantile(p: float) -> torch.Tensor:
        position = p * last
        low = position.floor()
        lower = ordered.gather(-1, low.long())
        upper = ordered.gather(-1, position.ceil().long())
        return torch.lerp(lower, upper, position - low)

    q1, q3 = quantile(0.25), quantile(0.75)
    fence = torch.where(counts > 0, q1 - c * (q3 - q1), torch.full_like(q1, -math.inf))
    return valid & (values < fence)


def probability_mask(probs: torch.Tensor, max_prob: float = 0.95, *, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Noisy where ``p > max_prob`` (XTF's KN rule: PCP = p(token) above ``kn_pcp_max``, methods.md 1).

    Args:
        probs: (...) float probabilities in [0, 1], e.g. ``token_logprobs(...).exp()``.
        max_prob: threshold in [0, 1] (methods.md default 0.95).
        valid: (...) bool or None; invalid entries are never noisy and their values are not checked.

    Returns:
        (...) bool, True at noisy entries.
    """
    _check_float_tensor("probs", probs)
    max_prob = _check_fraction("max_prob", max_prob)
    valid = _valid_or_all(valid, probs)
    bad = int((valid & ~((probs >= 0) & (probs <= 1))).sum())
    if bad:
        raise ValueError(f"probs has {bad} value(s) outside [0, 1] (or NaN) at valid positions")
    return valid & (probs > max_prob)


# ----------------------------------------------------------------------------------------------------------
# Multi-Otsu
# ----------------------------------------------------------------------------------------------------------


def multi_otsu(values: torch.Tensor, classes: int = 3, bins: int = 256, *,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """The ``classes - 1`` Multi-Otsu thresholds of ``values`` (XTF's TR rule, methods.md 1).

    Matches ``skimage.filters.threshold_multiotsu(values.numpy(), classes, nbins=bins)`` for float input,
    threshold for threshold, bit for bit: the histogram is ``np.histogram(values, bins)`` over
    [min, max], the bin probabilities are float32, and the exhaustive search maximises, in float32 and in
    the same summation order, the between-class objective ``sum_c S_c^2 / P_c`` (P_c, S_c the zeroth and
    first moments of class c over bin indices) with two details of that implementation kept so the
    answers agree: the first moment of bin 0 counts its probability once (as if its index were 1) and the
    one-bin class {bin 0} contributes 0. The first maximum in lexicographic order of the threshold indices
    wins. When exactly ``classes`` bins are non-empty, the thresholds are the first ``classes - 1`` of
    them. Cost: ``C(bins - 1, classes - 1)`` objective evaluations (32 385 at 3 classes and 256 bins).

    Args:
        values: (...) float, any device; fp16 / bf16 are read as float32. Must be finite and non-empty.
        classes: number of classes >= 2.
        bins: number of histogram bins >= classes.
        weights: optional (...) non-negative finite weights shaped like ``values``: the histogram counts
            each value with its weight (``np.histogram(..., weights=)``), e.g. XTF's S_TR of each vocabulary
            id weighted by its occurrences. None = every value once (the scikit-image result above).

    Returns:
        (classes - 1,) ascending bin centres in values' dtype (float32 for fp16 / bf16), on values' device.
    """
    _check_float_tensor("values", values)
    _check_int("classes", classes, low=2)
    _check_int("bins", bins, low=1)
    if bins < classes:
        raise ValueError(f"bins must be >= classes ({classes}), got {bins}")
    if values.numel() == 0:
        raise ValueError(f"values is empty (shape {tuple(values.shape)})")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("values must be finite (found NaN or inf)")
    array = values.detach().reshape(-1)
    if array.dtype in (torch.float16, torch.bfloat16):
        array = array.float()
    array = array.cpu().numpy()
    weight_array = None
    if weights is not None:
        _check_float_tensor("weights", weights)
        if weights.shape != values.shape:
            raise ValueError(f"weights shape {tuple(weights.shape)} must equal values shape {tuple(values.shape)}")
        weight_array = weights.detach().reshape(-1).double().cpu().numpy()
        if not np.all(np.isfinite(weight_array)) or np.any(weight_array < 0) or weight_array.sum() <= 0:
            raise ValueError("weights must be finite, >= 0 and not all 0")

    counts, edges = np.histogram(array, bins=bins, weights=weight_array)
    centres = (edges[:-1] + edges[1:]) / 2.0
    prob = (counts / np.sum(counts)).astype(np.float32)
    occupied = np.count_nonzero(prob)
    if occupied < classes:
        raise ValueError(
            f"values fall into only {occupied} non-empty bin(s) of {bins}, fewer than classes={classes}; use more "
            "bins or fewer classes"
        )
    if occupied == classes:
        indices = np.flatnonzero(prob)[:-1]
    else:
        indices = _otsu_indices(_between_class_table(prob), classes - 1)
    return torch.from_numpy(np.ascontiguousarray(centres[indices])).to(values.device)


def _between_class_table(prob: np.ndarray) -> np.ndarray:
    """(bins, bins) float32 table T[i, j] = S_ij^2 / P_ij of the class of bins i..j (0 where P_ij == 0)."""
    nbins = prob.shape[0]
    index = np.arange(nbins, dtype=np.float32)
    index[0] = 1.0  # bin 0's first moment counts its probability once (see multi_otsu)
    zeroth = np.cumsum(prob, dtype=np.float32)  # sequential float32 running sums
    first = np.cumsum(index * prob, dtype=np.float32)
    zeroth_before = np.concatenate([[np.float32(0)], zeroth[:-1]])
    first_before = np.concatenate([[np.float32(0)], first[:-1]])
    mass = zeroth[None, :] - zeroth_before[:, None]  # [i, j]: bins i..j (row 0 subtracts nothing)
    moment = first[None, :] - first_before[:, None]
    upper = np.triu(np.ones((nbins, nbins), dtype=bool))
    positive = upper & (mass > 0)
    table = np.zeros((nbins, nbins), dtype=np.float32)
    table[positive] = moment[positive] * moment[positive] / mass[positive]
    table[0, 0] = 0.0  # the one-bin class {bin 0} contributes 0 (see multi_otsu)
    return table


def _otsu_indices(table: np.ndarray, count: int) -> np.ndarray:
    """Indices t_0 < ... < t_{count-1} <= bins - 2 maximising the objective, first maximum in lexicographic order.

    The objective of a candidate is summed in float32 as
    ``(T[0, t_0] + T[t_last + 1, bins - 1]) + T[t_0 + 1, t_1] + ... + T[t_{count-2} + 1, t_last]``.
    The last two indices are searched as a vectorised grid, the others in a loop.
    """
    nbins = table.shape[0]
    last_bin = nbins - 1
    if count == 1:
        t = np.arange(nbins - 1)
        sigma = table[0, t] + table[t + 1, last_bin]
        return np.array([int(np.argmax(sigma))])
    grid = np.arange(nbins - 1)
    a, b = grid[:, None], grid[None, :]
    best_sigma, best = np.float32(0.0), None
    for prefix in itertools.combinations(range(nbins - 1), count - 2):
        low = prefix[-1] + 1 if prefix else 0
        allowed = (a >= low) & (b > a)
        if not allowed.any():
            continue
        bounds = [*prefix, a, b]
        sigma = table[0, bounds[0]] + table[b + 1, last_bin]
        for left, right in itertools.pairwise(bounds):
            sigma = sigma + table[left + 1, right]
        sigma = np.where(allowed, sigma, np.float32(-np.inf))
        flat = int(np.argmax(sigma))
        if sigma.flat[flat] > best_sigma:
            best_sigma = sigma.flat[flat]
            best = [*prefix, flat // (nbins - 1), flat % (nbins - 1)]
    return np.array(best)


def otsu_class(values: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Class index of every value: the number of thresholds <= value (``np.digitize(values, thresholds)``).

    Args:
        values: (...) float.
        thresholds: (classes - 1,) ascending, e.g. from :func:`multi_otsu`.

    Returns:
        (...) int64 in [0, classes); class 0 holds the lowest values. XTF drops class 1 (methods.md 1).
    """
    _check_float_tensor("values", values)
    _check_float_tensor("thresholds", thresholds)
    if thresholds.dim() != 1 or thresholds.numel() == 0:
        raise ValueError(f"thresholds must be 1-D and non-empty, got shape {tuple(thresholds.shape)}")
    if bool((thresholds[1:] < thresholds[:-1]).any()):
        raise ValueError("thresholds must be ascending")
    dtype = torch.promote_types(values.dtype, thresholds.dtype)
    boundaries = thresholds.to(device=values.device, dtype=dtype)
    return torch.bucketize(values.to(dtype), boundaries, right=True)


# ----------------------------------------------------------------------------------------------------------
# mask algebra
# ----------------------------------------------------------------------------------------------------------


def _check_masks(masks: tuple) -> None:
    if not masks:
        raise ValueError("masks: give at least one mask")
    for index, mask in enumerate(masks):
        _check_mask(f"masks[{index}]", mask, masks[0], "masks[0]")


def union(*masks: torch.Tensor) -> torch.Tensor:
    """Elementwise OR of one or more bool masks of one shape (XTF: noisy if ANY rule fires)."""
    _check_masks(masks)
    out = masks[0].clone()
    for mask in masks[1:]:
        out |= mask
    return out


def intersection(*masks: torch.Tensor) -> torch.Tensor:
    """Elementwise AND of one or more bool masks of one shape."""
    _check_masks(masks)
    out = masks[0].clone()
    for mask in masks[1:]:
        out &= mask
    return out
