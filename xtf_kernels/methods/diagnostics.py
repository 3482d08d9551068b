"""What each rule drops, by token type and by position: the diagnostics that show a rule removing whole token
types, special tokens, digits, or mostly the end of responses.

On the toy benchmark the review found each of these: TR dropped ``=``, 3-6 of the 10 digits and once
``<eos>`` at every occurrence; KN removed every labelled example of what the base finds easy; RI's fence fired
7-11% in the last fifth of a response and <= 0.6% elsewhere. :func:`rule_diagnostics` measures them on any
scored data (in memory or read back from a pipeline result) and says in plain warnings what to look at.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .base import SampleScores
from .safeguards import GUARD_CODES

POSITION_BINS = 5
# a type with at least this many response occurrences is common enough that losing most of it matters
MIN_TYPE_COUNT = 20
# ... and a rule dropping more than this share of its occurrences gets a warning
LARGE_SHARE = 0.5
# answers are made of digits: a rule dropping more than this share of the digit tokens gets a warning
DIGIT_SHARE = 0.1
# sub-word markers of byte-level BPE (GPT-2 / Llama-3) and SentencePiece, stripped before the digit test
_MARKERS = "Ġ▁ "


def scored_mask(result: SampleScores) -> torch.Tensor:
    """(L,) bool: the positions a scorer scored (any score not NaN)."""
    valid = torch.zeros(result.dropped_by.shape, dtype=torch.bool)
    for values in result.scores.values():
        valid |= ~torch.isnan(values)
    return valid


class _Counts:
    """A (V,) int64 count vector that grows with the largest id seen."""

    def __init__(self):
        self.values = torch.zeros(0, dtype=torch.int64)

    def add(self, ids: torch.Tensor) -> None:
        counts = torch.bincount(ids, minlength=self.values.numel())
        if counts.numel() > self.values.numel():
            counts[: self.values.numel()] += self.values
            self.values = counts
        else:
            self.values += counts

    def at(self, size: int) -> torch.Tensor:
        out = torch.zeros(size, dtype=torch.int64)
        out[: self.values.numel()] = self.values
        return out


def _texts(ids: list[int], tokenizer) -> list[str]:
    if tokenizer is None:
        return [str(i) for i in ids]
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]
    return [tokenizer.decode([i]) for i in ids]


def rule_diagnostics(samples: Iterable, results: Iterable[SampleScores], *, tokenizer=None,
                     special_ids: Iterable[int] = (), top: int = 10) -> dict:
    """Per-rule diagnostics by token type and relative position, with warnings.

    Args:
        samples: the scored samples (anything with ``input_ids`` (L,) int64), aligned with ``results``.
        results: their :class:`SampleScores` (``dropped_by`` bits name the rules).
        tokenizer: optional, for token texts (and the digit test: a token whose text, sub-word markers
            stripped, is all digits); without one ids are shown and no digit is recognised.
        special_ids: ids counted as special tokens (e.g. the tokenizer's ``all_special_ids`` and the eos).
        top: how many of a rule's most-dropped types to list.

    Returns:
        a JSON-serialisable dict: ``scored_tokens``; ``positions`` (``bins``, ``scored`` per bin and, per
        rule and for the union, the drop rate per bin of relative position (t - first) / n in the response);
        ``rules`` (per rule: ``dropped``, ``always_dropped_types`` (types every response occurrence of which
        it drops, with their ``share`` of the scored tokens), ``top_types``, ``special_dropped``,
        ``digits_dropped`` / ``digit_tokens``); ``guard`` (counts per safeguard code when results carry a
        ``guard`` score); ``whole_response`` (samples with every scored token dropped, and samples kept whole
        by ``all_dropped="keep"``); ``warnings`` (sentences).
    """
    special = torch.tensor(sorted(set(int(i) for i in special_ids)), dtype=torch.int64)
    rule_names: tuple[str, ...] | None = None
    occurrences = _Counts()
    dropped_by_rule: list[_Counts] = []
    position_scored = torch.zeros(POSITION_BINS, dtype=torch.int64)
    position_dropped: list[torch.Tensor] = []
    guard_counts = dict.fromkeys(GUARD_CODES, 0)
    has_guard = False
    whole_dropped = whole_kept = 0
    for sample, result in zip(samples, results):
        if rule_names is None:
            rule_names = result.rule_names
            dropped_by_rule = [_Counts() for _ in range(len(rule_names) + 1)]  # + the union
            position_dropped = [torch.zeros(POSITION_BINS, dtype=torch.int64) for _ in range(len(rule_names) + 1)]
        valid = scored_mask(result)
        if not bool(valid.any()):
            continue
        ids = sample.input_ids[valid]
        positions = valid.nonzero().squeeze(1)
        relative = torch.arange(positions.numel(), dtype=torch.float64) / positions.numel()
        bins = (relative * POSITION_BINS).floor().long().clamp(max=POSITION_BINS - 1)
        position_scored += torch.bincount(bins, minlength=POSITION_BINS)
        occurrences.add(ids)
        flags = result.dropped_by[valid].long()
        masks = [((flags >> i) & 1) == 1 for i in range(len(rule_names))] + [flags != 0]
        for counts, per_position, mask in zip(dropped_by_rule, position_dropped, masks):
            counts.add(ids[mask])
            per_position += torch.bincount(bins[mask], minlength=POSITION_BINS)
        if "guard" in result.scores:
            has_guard = True
            codes = result.scores["guard"][valid]
            for name, code in GUARD_CODES.items():
                guard_counts[name] += int((codes == code).sum())
            whole_kept += int(bool((codes == GUARD_CODES["whole_response"]).any()))
        whole_dropped += int(bool(masks[-1].all()))
    if rule_names is None:
        return {"scored_tokens": 0, "positions": {}, "rules": {}, "guard": None, "whole_response": {},
                "warnings": []}

    size = max(occurrences.values.numel(), *(c.values.numel() for c in dropped_by_rule), 1)
    total = occurrences.at(size)
    scored = int(total.sum())
    present_ids = ((total > 0) | (dropped_by_rule[-1].at(size) > 0)).nonzero().squeeze(1).tolist()
    texts = dict(zip(present_ids, _texts(present_ids, tokenizer)))
    digit = torch.zeros(size, dtype=torch.bool)
    if tokenizer is not None:
        for i, text in texts.items():
            digit[i] = text.strip(_MARKERS).isdigit()
    is_special = torch.zeros(size, dtype=torch.bool)
    is_special[special[special < size]] = True
    digit_tokens = int(total[digit].sum())
    warnings: list[str] = []
    rules = {}
    for name, counts in zip((*rule_names, "union"), dropped_by_rule):
        dropped = counts.at(size)
        present = total > 0
        always = present & (dropped == total)
        order = torch.argsort(dropped, descending=True, stable=True)
        entry = {
            "dropped": int(dropped.sum()),
            "always_dropped_types": [{"id": int(i), "token": texts[i], "occurrences": int(total[i])}
                                     for i in always.nonzero().squeeze(1).tolist()],
            "always_dropped_share": int(total[always].sum()) / scored if scored else 0.0,
            "top_types": [{"id": int(i), "token": texts[i], "dropped": int(dropped[i]),
                           "occurrences": int(total[i]), "share_of_type": int(dropped[i]) / int(total[i])}
                          for i in order[:top].tolist() if dropped[i] > 0],
            "special_dropped": int(dropped[is_special].sum()),
            "digits_dropped": int(dropped[digit].sum()),
            "digit_tokens": digit_tokens,
        }
        rules[name] = entry
        if name == "union":
            continue
        if entry["special_dropped"]:
            kinds = ", ".join(texts[i] for i in (is_special & (dropped > 0)).nonzero().squeeze(1).tolist())
            warnings.append(f"{name} drops {entry['special_dropped']} special token(s) ({kinds}); protect them "
                            "(Safeguards.protect_special_tokens)")
        if digit_tokens and entry["digits_dropped"] / digit_tokens > DIGIT_SHARE:
            warnings.append(f"{name} drops {entry['digits_dropped']} of {digit_tokens} digit tokens "
                            f"({entry['digits_dropped'] / digit_tokens:.0%}); answers are made of digits")
        common = (total >= MIN_TYPE_COUNT) & (dropped > LARGE_SHARE * total)
        for i in common.nonzero().squeeze(1).tolist():
            warnings.append(f"{name} drops {int(dropped[i])} of the {int(total[i])} occurrences of {texts[i]!r} "
                            f"({int(dropped[i]) / int(total[i]):.0%})")
    positions = {
        "bins": [[i / POSITION_BINS, (i + 1) / POSITION_BINS] for i in range(POSITION_BINS)],
        "scored": position_scored.tolist(),
        "drop_rate": {name: [int(d) / int(s) if s else 0.0 for d, s in zip(per_position, position_scored)]
                      for name, per_position in zip((*rule_names, "union"), position_dropped)},
    }
    return {"scored_tokens": scored, "positions": positions, "rules": rules,
            "guard": guard_counts if has_guard else None,
            "whole_response": {"dropped": whole_dropped, "kept_whole": whole_kept}, "warnings": warnings}
