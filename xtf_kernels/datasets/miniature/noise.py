"""Token noise of several kinds injected into SFT responses, each with its own ground truth.

- ``wrong_number``: a step result replaced by a plausible wrong number (off by 1-3 or 10, still in [0, 99])
  and carried through the rest of the solution (the next step's operand, its result, the answer): every
  number that differs from the true solution is marked;
- ``off_domain``: a story sentence inserted at a step boundary;
- ``garbled``: a scraped-text artefact (markup, entity, mojibake) inserted before a word;
- ``boilerplate`` (harmless, counted apart): an opener / closer phrase, at a fixed rate in every pool.
:func:`inject_noise` adds events to random samples until the harmful kinds hold the requested fraction of
the pool's response tokens (0 %, 5 %, 15 % in the benchmark), at most three events per sample. Kinds are
drawn with weights :data:`KIND_WEIGHTS`, chosen so each harmful kind holds a similar share of the noisy
tokens (a garbled artefact is about 4 tokens, a wrong chain 6-8, a sentence about 10).
"""

from __future__ import annotations

import random
import re

from . import world
from .encoding import encode_document
from .text import NOISE_KINDS
from .text import Document
from .text import Segment
from .text import story_sentence
from .tokenizer import MiniatureTokenizer

MAX_EVENTS_PER_SAMPLE = 3
_EXPRESSION = re.compile(r"^ (\d+) ([+-]) (\d+) = $")
KIND_WEIGHTS = {"wrong_number": 1.0, "off_domain": 0.8, "garbled": 2.0}


def wrong_number(value: int, rng: random.Random) -> int:
    """A plausible wrong value: off by 1, 2, 3 or 10, kept in [0, 99] and != value."""
    while True:
        candidate = value + rng.choice((-10, -3, -2, -1, 1, 2, 3, 10))
        if 0 <= candidate <= 99 and candidate != value:
            return candidate


def corrupt(document: Document, kind: str, rng: random.Random) -> Document:
    """``document`` with one noise event of ``kind`` added (see the module docstring)."""
    segments: list[Segment] = list(document.response)
    if kind == "wrong_number":
        segments = _wrong_chain(segments, rng)
    elif kind == "off_domain":
        boundaries = [i + 1 for i, (text, k) in enumerate(segments) if k == "template" and text == "."]
        segments.insert(rng.choice(boundaries), (story_sentence(rng), "off_domain"))
    elif kind == "garbled":
        before_word = [i for i, (text, _) in enumerate(segments) if i > 0 and text.startswith(" ")]
        segments.insert(rng.choice(before_word + [len(segments)]), (" " + rng.choice(world.ARTEFACTS), "garbled"))
    else:
        raise ValueError(f"kind must be one of {NOISE_KINDS}, got {kind!r}")
    return Document(document.question, tuple(segments), document.answer, document.kind)


def _wrong_chain(segments: list[Segment], rng: random.Random) -> list[Segment]:
    """A wrong result at one step, carried through: the later steps compute on it, the answer states it."""
    expressions = [i for i, (text, kind) in enumerate(segments) if kind == "work" and _EXPRESSION.match(text)]
    answer = next(i for i, (_, kind) in enumerate(segments) if kind == "answer")
    for _attempt in range(20):
        first = rng.randrange(len(expressions))
        value = wrong_number(int(segments[expressions[first] + 1][0]), rng)
        replaced = {expressions[first] + 1: [(str(value), "wrong_number")]}
        for index in expressions[first + 1:]:  # every later step starts from the previous result
            _a, op, b = _EXPRESSION.match(segments[index][0]).groups()
            replaced[index] = [(" ", "work"), (str(value), "wrong_number"), (f" {op} {b} = ", "work")]
            value = value + int(b) if op == "+" else value - int(b)
            replaced[index + 1] = [(str(value), "wrong_number")]
        replaced[answer] = [(str(value), "wrong_number")]
        if all(0 <= int(text) <= 99 for pieces in replaced.values() for text, k in pieces if k == "wrong_number"):
            return [piece for i, segment in enumerate(segments) for piece in replaced.get(i, [segment])]
    # Unreachable for the generator's problems (answers <= 27, a step off by <= 10 stays in range in a few draws).
    raise ValueError("no wrong chain stays in [0, 99] for this problem")


def inject_noise(documents: list[Document], fraction: float, tokenizer: MiniatureTokenizer,
                 rng: random.Random, kinds: tuple[str, ...] = NOISE_KINDS) -> list[Document]:
    """``documents`` with noise events until the harmful kinds are >= ``fraction`` of the response tokens."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 0.5:
        raise ValueError(f"fraction must be a number in [0, 0.5], got {fraction!r}")
    out = list(documents)
    encoded = [encode_document(d, tokenizer, label_prompt=False) for d in out]
    response = [int(e.sample.response_mask.sum()) for e in encoded]
    noisy = [int((e.sample.response_mask & e.sample.noise_mask).sum()) for e in encoded]
    events = [0] * len(out)
    order = list(range(len(out)))
    rng.shuffle(order)
    position = 0
    while sum(noisy) < fraction * sum(response):
        candidates = [i for i in order[position:] + order[:position] if events[i] < MAX_EVENTS_PER_SAMPLE]
        if not candidates:
            raise ValueError(f"cannot reach {fraction:.0%} noise with {MAX_EVENTS_PER_SAMPLE} events per sample")
        index = candidates[0]
        position = (order.index(index) + 1) % len(order)
        # one wrong chain per sample: a second would have to corrupt an already corrupted solution
        allowed = [k for k in kinds if k != "wrong_number" or not any(kind == "wrong_number"
                                                                      for _, kind in out[index].response)]
        kind = rng.choices(allowed, weights=[KIND_WEIGHTS[k] for k in allowed])[0]
        out[index] = corrupt(out[index], kind, rng)
        events[index] += 1
        sample = encode_document(out[index], tokenizer, label_prompt=False).sample
        response[index] = int(sample.response_mask.sum())
        noisy[index] = int((sample.response_mask & sample.noise_mask).sum())
    return out
