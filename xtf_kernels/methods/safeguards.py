"""Safeguards shared by the token filters: protected tokens, caps on what a filter may drop, and what happens
to a sample whose whole response a filter would drop.

Why: on a model that already writes the task's format, XTF's KN rule drops every labelled example of what the
base finds easy (``<eos>``, "The answer is", digits it knows) and its TR rule drops whole token types; a model
fine-tuned without them stops writing the format (``benchmarks/methods``: exact match 0.30 -> 0.00). The
safeguards bound that damage whatever the rules decide:

- protected tokens are never dropped: the model's end-of-sequence ids (from its generation config and config),
  the tokenizer's special tokens (chat markers included) when a tokenizer is given, and a user list of ids
  or strings;
- a per-sample cap: at most ``floor(max_sample_drop * n)`` of a sample's ``n`` response tokens are dropped;
  when the rules drop more, the least-noisy dropped tokens are kept back (deterministically: a scorer's
  noise ranking, ties to the earlier position);
- a global cap on the fraction of response tokens dropped over the dataset, with a warning or an error;
- ``all_dropped``: a sample whose every response token would be dropped is either kept whole ("keep": the
  filter's verdict is undone for it) or left with no trained token ("remove"; :func:`remove_empty` takes such
  samples out of a list). Either way it is counted.

What a safeguard did to each token is recorded in the ``guard`` score (fp32, NaN where not scored) with the
codes of :data:`GUARD_CODES`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass

import torch

from .. import select
from ..datasets.samples import IGNORE_INDEX
from ..datasets.samples import TokenizedSample
from ..errors import DropCapExceededError
from .base import SampleScores

ACTIONS = ("warn", "error")
ALL_DROPPED = ("keep", "remove")
# guard score codes: why a scored token is kept although a rule fired (0: nothing to say)
NONE, PROTECTED, CAPPED, ANCHOR, WHOLE_RESPONSE = 0.0, 1.0, 2.0, 3.0, 4.0
GUARD_CODES = {"none": NONE, "protected": PROTECTED, "capped": CAPPED, "anchor": ANCHOR,
               "whole_response": WHOLE_RESPONSE}
# the in-flight global-cap check waits for this many scored tokens: below it the running fraction of a few
# batches (a 200-token sample moves it by whole percents) says little about the dataset
GLOBAL_CHECK_MIN_TOKENS = 2048


# scorers' running global-cap checks are off in this thread while > 0 (see deferred_total_check)
_deferred = threading.local()


def _fraction_or_none(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1] or None, got {value!r}")


@dataclass(frozen=True)
class Safeguards:
    """What no token filter may do, whatever its rules say (see the module docstring).

    Attributes:
        protect_special_tokens: never drop the model's eos ids (``generation_config`` / ``config``) nor, with a
            tokenizer, its special tokens (``all_special_ids``: bos / eos / pad / unk and the chat markers
            added as special tokens).
        protected_ids: more token ids never dropped.
        protected_tokens: strings never dropped: every id each string encodes to (``tokenizer.encode(s,
            add_special_tokens=False)``; needs a tokenizer).
        max_sample_drop: per-sample cap on the fraction of response tokens dropped (None = no cap).
            Default 0.4: the largest drop budget the methods this package implements found useful (Token
            Cleaning keeps 60%, RHO-1 60-70%); an XTF union that drops more than that from one sample, as
            on the toy benchmark (62%), removes the answer's template with the noise.
        max_total_drop: cap on the fraction dropped over the whole dataset (None = no cap); checked once on
            the totals by :func:`~xtf_kernels.methods.score_samples`, the pipeline and :func:`finalize`, and
            as scores come in (after 2048 scored tokens) when a scorer is called batch by batch.
        on_exceed: "warn" (a ``UserWarning``, once) or "error" (:class:`DropCapExceededError`) when the global
            cap is exceeded.
        all_dropped: a sample whose whole response would be dropped: "keep" (train on it whole) or "remove"
            (no trained token; :func:`remove_empty` deletes it from a list).
    """

    protect_special_tokens: bool = True
    protected_ids: tuple[int, ...] = ()
    protected_tokens: tuple[str, ...] = ()
    max_sample_drop: float | None = 0.4
    max_total_drop: float | None = 0.4
    on_exceed: str = "warn"
    all_dropped: str = "remove"

    def __post_init__(self):
        if not isinstance(self.protect_special_tokens, bool):
            raise TypeError(f"protect_special_tokens must be a bool, got {self.protect_special_tokens!r}")
        ids = tuple(self.protected_ids)
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
            raise ValueError(f"protected_ids must be non-negative ints, got {self.protected_ids!r}")
        object.__setattr__(self, "protected_ids", ids)
        if isinstance(self.protected_tokens, str):
            raise TypeError("protected_tokens must be a tuple of strings, not one string")
        tokens = tuple(self.protected_tokens)
        if any(not isinstance(t, str) or not t for t in tokens):
            raise ValueError(f"protected_tokens must be non-empty strings, got {self.protected_tokens!r}")
        object.__setattr__(self, "protected_tokens", tokens)
        _fraction_or_none("max_sample_drop", self.max_sample_drop)
        _fraction_or_none("max_total_drop", self.max_total_drop)
        if self.on_exceed not in ACTIONS:
            raise ValueError(f"on_exceed must be one of {ACTIONS}, got {self.on_exceed!r}")
        if self.all_dropped not in ALL_DROPPED:
            raise ValueError(f"all_dropped must be one of {ALL_DROPPED}, got {self.all_dropped!r}")

    @classmethod
    def off(cls) -> Safeguards:
        """No safeguard at all: what the papers describe (nothing protected, no cap, whole drops allowed)."""
        return cls(protect_special_tokens=False, max_sample_drop=None, max_total_drop=None, all_dropped="remove")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["protected_ids"] = list(self.protected_ids)
        out["protected_tokens"] = list(self.protected_tokens)
        return out


def _ids_of(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (list, tuple, set)):
        return [int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def eos_ids_of(model) -> list[int]:
    """The end-of-sequence ids of a transformers model: ``generation_config.eos_token_id`` (an int or a list,
    e.g. Llama-3's ``<|eot_id|>`` next to ``<|end_of_text|>``) and ``config.eos_token_id``."""
    inner = getattr(model, "module", model)
    found: list[int] = []
    for holder in (getattr(inner, "generation_config", None), getattr(inner, "config", None)):
        found += _ids_of(getattr(holder, "eos_token_id", None))
    return found


def special_ids_of(tokenizer) -> list[int]:
    """A tokenizer's special ids: ``all_special_ids`` (transformers) or its ``*_token_id`` attributes."""
    ids = getattr(tokenizer, "all_special_ids", None)
    found = _ids_of(list(ids)) if ids is not None else []
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "sep_token_id", "cls_token_id"):
        found += _ids_of(getattr(tokenizer, name, None))
    found += _ids_of(getattr(tokenizer, "additional_special_tokens_ids", None))
    return found


def resolve_protected_ids(guard: Safeguards, *, model=None, tokenizer=None, vocab_size: int | None = None
                          ) -> torch.Tensor:
    """(P,) int64 sorted unique ids no rule may drop under ``guard`` (see :class:`Safeguards`).

    Raises:
        ValueError: a protected id outside the vocabulary, or a protected string without a tokenizer / that
            encodes to nothing.
    """
    found = list(guard.protected_ids)
    if guard.protect_special_tokens:
        if model is not None:
            found += eos_ids_of(model)
        if tokenizer is not None:
            found += special_ids_of(tokenizer)
    if guard.protected_tokens:
        if tokenizer is None or not hasattr(tokenizer, "encode"):
            raise ValueError("protected_tokens needs a tokenizer (pass tokenizer= to the scorer)")
        for text in guard.protected_tokens:
            ids = list(tokenizer.encode(text, add_special_tokens=False))
            if not ids:
                raise ValueError(f"protected_tokens entry {text!r} encodes to no token")
            found += [int(i) for i in ids]
    out = torch.tensor(sorted(set(found)), dtype=torch.int64)
    if vocab_size is not None and out.numel() and (int(out.min()) < 0 or int(out.max()) >= vocab_size):
        raise ValueError(f"protected ids must be in [0, {vocab_size}) (the model's vocabulary), got {out.tolist()}")
    return out


def cap_sample_drops(dropped: torch.Tensor, valid: torch.Tensor, noise: torch.Tensor, max_fraction: float
                     ) -> torch.Tensor:
    """Which dropped tokens the per-sample cap keeps back.

    Args:
        dropped: (B, L) bool, what the rules drop. valid: (B, L) bool, the response tokens.
        noise: (B, L) float, higher = noisier (finite where ``dropped``).
        max_fraction: each row drops at most ``select.keep_count(max_fraction, n_valid)`` tokens.

    Returns:
        (B, L) bool, True at the dropped tokens kept back: the least noisy ones of each row over its cap,
        ties kept back from the later position first (so the earlier token stays dropped).
    """
    rescued = torch.zeros_like(dropped)
    counts = (dropped & valid).sum(-1).tolist()
    sizes = valid.sum(-1).tolist()
    for row, (count, size) in enumerate(zip(counts, sizes)):
        allowed = select.keep_count(max_fraction, size)
        if count <= allowed:
            continue
        positions = (dropped[row] & valid[row]).nonzero().squeeze(1)
        # stable descending sort: the noisiest first, equal noise in position order
        order = torch.sort(noise[row, positions].double(), descending=True, stable=True).indices
        rescued[row, positions[order[allowed:]]] = True
    return rescued


def whole_response_dropped(dropped: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B,) bool: rows with at least one response token, every one of them dropped."""
    return valid.any(-1) & ~(valid & ~dropped).any(-1)


def check_total_drop(dropped: int, scored: int, guard: Safeguards, *, what: str = "the filter") -> bool:
    """Whether ``dropped / scored`` exceeds ``guard.max_total_drop``; warns or raises per ``guard.on_exceed``.

    Raises:
        DropCapExceededError: exceeded and ``on_exceed == "error"``.
    """
    if guard.max_total_drop is None or scored <= 0:
        return False
    fraction = dropped / scored
    if fraction <= guard.max_total_drop:
        return False
    message = (f"{what} drops {fraction:.1%} of {scored} response tokens, above max_total_drop = "
               f"{guard.max_total_drop:.1%}; check the report's per-rule diagnostics or calibrate the thresholds "
               "(xtf calibrate)")
    if guard.on_exceed == "error":
        raise DropCapExceededError(message)
    warnings.warn(message, UserWarning, stacklevel=3)
    return True


def drop_counts(scores: dict[str, torch.Tensor], dropped_by: torch.Tensor) -> tuple[int, int]:
    """(dropped, scored) response tokens of results of any shape: scored = not NaN in ``guard`` (every response
    token, protected ones included; without a guard score: not NaN in any score), dropped = scored with a
    rule bit set."""
    if "guard" in scores:
        scored = ~torch.isnan(scores["guard"])
    else:
        scored = torch.zeros(dropped_by.shape, dtype=torch.bool)
        for value in scores.values():
            scored |= ~torch.isnan(value)
    return int(((dropped_by != 0) & scored).sum()), int(scored.sum())


@contextlib.contextmanager
def deferred_total_check() -> Iterator[None]:
    """Within this block (in this thread) a :class:`DropCounter` counts but does not check the global cap:
    the caller checks the total once with :func:`check_total_drop`. The scoring pipeline does so, because a
    rank's running fraction is not the dataset's (a rank holding the noisier shards would stop the run while
    the whole stays under the cap) and one process and N ranks must reach the same verdict."""
    _deferred.depth = getattr(_deferred, "depth", 0) + 1
    try:
        yield
    finally:
        _deferred.depth -= 1


def total_check_deferred() -> bool:
    """Whether this thread is inside :func:`deferred_total_check`."""
    return getattr(_deferred, "depth", 0) > 0


class DropCounter:
    """Running totals of dropped / scored response tokens, checked against the global cap as they grow, once
    2048 tokens are in (a scorer called batch by batch, e.g. in a training loop; inside
    :func:`deferred_total_check`, as :func:`~xtf_kernels.methods.score_samples` and the pipeline run it, only
    counted)."""

    def __init__(self, guard: Safeguards, what: str):
        self.guard, self.what = guard, what
        self.dropped = 0
        self.scored = 0
        self.warned = False

    def add(self, dropped: torch.Tensor, valid: torch.Tensor) -> None:
        self.dropped += int((dropped & valid).sum())
        self.scored += int(valid.sum())
        if not self.warned and self.scored >= GLOBAL_CHECK_MIN_TOKENS and not total_check_deferred():
            self.warned = check_total_drop(self.dropped, self.scored, self.guard, what=self.what)


def guard_score(valid: torch.Tensor) -> torch.Tensor:
    """(B, L) fp32 guard codes, 0 at scored tokens and NaN elsewhere."""
    return torch.where(valid, torch.zeros(valid.shape, dtype=torch.float32, device=valid.device),
                       torch.full(valid.shape, math.nan, dtype=torch.float32, device=valid.device))


def guard_sample_drops(dropped: torch.Tensor, valid: torch.Tensor, noise: torch.Tensor, guard: torch.Tensor,
                       safeguards: Safeguards) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-sample safeguards on rule decisions that already spare the protected tokens.

    Args:
        dropped: (B, L) bool, what the rules drop. valid: (B, L) bool, the response tokens.
        noise: (B, L) float, higher = noisier (the per-sample cap keeps the least noisy back).
        guard: (B, L) fp32 guard codes so far (updated copy returned).

    Returns:
        (dropped, guard) after the per-sample cap (code 2) and, with ``all_dropped="keep"``, the restoring of
        samples whose whole response would go (code 4).
    """
    dropped, guard = dropped & valid, guard.clone()
    if safeguards.max_sample_drop is not None:
        rescued = cap_sample_drops(dropped, valid, noise, safeguards.max_sample_drop)
        dropped = dropped & ~rescued
        guard[rescued] = CAPPED
    if safeguards.all_dropped == "keep":
        whole = whole_response_dropped(dropped, valid)[:, None] & dropped
        dropped = dropped & ~whole
        guard[whole] = WHOLE_RESPONSE
    return dropped, guard


def finalize(results: list[SampleScores], safeguards: Safeguards, *, noise: str, largest_is_noisiest: bool,
             what: str = "the filter") -> list[SampleScores]:
    """The per-sample safeguards and the global-cap check on results whose drops were decided over the whole
    pool (Token Cleaning's global top k: after :func:`~xtf_kernels.methods.score_samples`, or on the samples
    read back from a :func:`~xtf_kernels.pipeline.score_dataset` result before filtering).

    Args:
        results: one :class:`~xtf_kernels.methods.SampleScores` per sample, with a ``guard`` score.
        noise: the score that ranks noisiness (e.g. "influence"); ``largest_is_noisiest`` its direction.

    Returns:
        new results (dropped_by cleared where a safeguard keeps a token, guard codes updated).
    """
    out, dropped_total, scored_total = [], 0, 0
    for result in results:
        valid = ~torch.isnan(result.scores["guard"])
        score = torch.nan_to_num(result.scores[noise])
        dropped, guard = guard_sample_drops((result.dropped_by != 0)[None], valid[None],
                                            (score if largest_is_noisiest else -score)[None],
                                            result.scores["guard"][None], safeguards)
        flags = torch.where(dropped[0], result.dropped_by, torch.zeros_like(result.dropped_by))
        out.append(SampleScores({**result.scores, "guard": guard[0]}, flags, result.rule_names))
        dropped_total += int(dropped.sum())
        scored_total += int(valid.sum())
    check_total_drop(dropped_total, scored_total, safeguards, what=what)
    return out


def remove_empty(samples: Sequence[TokenizedSample]) -> list[TokenizedSample]:
    """``samples`` without those that have no trained token left (every label -100), e.g. after filtering
    with ``all_dropped="remove"``."""
    return [s for s in samples if bool((s.labels[1:] != IGNORE_INDEX).any())]
