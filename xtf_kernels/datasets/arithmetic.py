"""A seeded arithmetic word-problem SFT set with a known fraction of corrupted response tokens.

Each problem is a one-step word problem (addition, subtraction or multiplication) whose response works it
out and ends with ``The answer is N .``::

    prompt:   Anna has 7 pens . Anna buys 5 more pens . How many pens does Anna have now ?
    response: Anna has 7 + 5 = 1 2 pens . The answer is 1 2 .      (numbers are single-digit tokens)

Two kinds of noise are applied to the response tokens, and recorded in ``noise_mask``:
- random label tokens: a response token is replaced by a different token drawn uniformly from the
  non-special vocabulary (it may be a digit, so an answer can become wrong);
- irrelevant filler: spans of 1-3 words from an unrelated vocabulary ("weather", "guitar", ...) are
  inserted between response tokens.
The end-of-sequence token is never corrupted. ``noise_fraction`` is the expected fraction of corrupted
tokens among the response tokens before eos; ``ArithmeticSFT.noise_fraction`` is the fraction actually
drawn. Everything is a pure function of ``seed``.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

import torch

from .._atomic import atomic_open
from .samples import IGNORE_INDEX
from .samples import TokenizedSample
from .tokenizer import ArithmeticTokenizer

NAMES = ("Tom", "Anna", "Ben", "Lucy", "Sam", "Mia", "Leo", "Emma")
ITEMS = ("apples", "pens", "books", "coins", "cards", "eggs", "stamps", "shells")
TASK_WORDS = (
    "has", "buys", "more", "How", "many", "does", "have", "now", "?", ".", "gives", "away", "left", "boxes",
    "with", "in", "each", "box", "total", "+", "-", "*", "=", "The", "answer", "is",
)
FILLER_WORDS = (
    "weather", "sunny", "purple", "guitar", "ocean", "music", "dance", "sky", "lovely", "indeed", "banana",
    "movie", "garden", "quiet", "river", "poem",
)
OPERATIONS = ("add", "sub", "mul")


def arithmetic_tokenizer() -> ArithmeticTokenizer:
    """The tokenizer of this task: 4 special tokens, 10 digits, names, items, task words, filler words (64 ids)."""
    return ArithmeticTokenizer([*NAMES, *ITEMS, *TASK_WORDS, *FILLER_WORDS])


@dataclass(frozen=True)
class ArithmeticProblem:
    """One clean problem: prompt and response text and the integer answer."""

    prompt: str
    response: str
    answer: int
    operation: str


def make_problem(rng: random.Random, operations=OPERATIONS, max_operand: int = 20) -> ArithmeticProblem:
    """One problem drawn with ``rng``; operands of add / sub are in [1, max_operand], of mul in [2, 9]."""
    name, item, op = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(operations)
    if op == "add":
        a, b = rng.randint(1, max_operand), rng.randint(1, max_operand)
        prompt = f"{name} has {a} {item} . {name} buys {b} more {item} . How many {item} does {name} have now ?"
        c, sign = a + b, "+"
    elif op == "sub":
        a = rng.randint(2, max_operand)
        b = rng.randint(1, a - 1)
        prompt = f"{name} has {a} {item} . {name} gives {b} {item} away . How many {item} does {name} have left ?"
        c, sign = a - b, "-"
    elif op == "mul":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        prompt = f"{name} has {a} boxes with {b} {item} in each box . How many {item} does {name} have in total ?"
        c, sign = a * b, "*"
    else:
        raise ValueError(f"operations must be drawn from {OPERATIONS}, got {op!r}")
    response = f"{name} has {a} {sign} {b} = {c} {item} . The answer is {c} ."
    return ArithmeticProblem(prompt, response, c, op)


def make_problems(n: int, *, seed: int = 0, operations=OPERATIONS, max_operand: int = 20) -> list[ArithmeticProblem]:
    """``n`` clean problems, a pure function of ``seed`` (use a different seed for a held-out set)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if isinstance(max_operand, bool) or not isinstance(max_operand, int) or max_operand < 2:
        raise ValueError(f"max_operand must be an int >= 2, got {max_operand!r}")
    unknown = set(operations) - set(OPERATIONS)
    if not operations or unknown:
        raise ValueError(f"operations must be a non-empty subset of {OPERATIONS}, got {operations!r}")
    rng = random.Random(f"problems-{seed}")
    return [make_problem(rng, tuple(operations), max_operand) for _ in range(n)]


def encode_problem(problem: ArithmeticProblem, tokenizer: ArithmeticTokenizer) -> TokenizedSample:
    """``<bos> prompt response <eos>``; labels -100 on bos and prompt."""
    prompt = [tokenizer.bos_token_id, *tokenizer.encode(problem.prompt)]
    response = [*tokenizer.encode(problem.response), tokenizer.eos_token_id]
    ids = torch.tensor(prompt + response, dtype=torch.int64)
    labels = ids.clone()
    labels[: len(prompt)] = IGNORE_INDEX
    return TokenizedSample(ids, labels, torch.zeros(len(ids), dtype=torch.bool))


def _noise_rates(noise_fraction: float, filler_share: float) -> tuple[float, float]:
    """(replace probability per clean token, expected filler tokens per clean token) giving ``noise_fraction``.

    With r replaced and g inserted tokens per clean token, the noisy fraction is (r + g) / (1 + g); the filler
    share g / (r + g) = s gives g = s f / (1 - s f) and r = (1 - s) f (1 + g).
    """
    g = filler_share * noise_fraction / (1.0 - filler_share * noise_fraction)
    r = (1.0 - filler_share) * noise_fraction * (1.0 + g)
    return r, g


def corrupt(sample: TokenizedSample, rng: random.Random, tokenizer: ArithmeticTokenizer, *,
            noise_fraction: float, filler_share: float) -> TokenizedSample:
    """``sample`` with random label tokens and filler spans in its response (eos untouched), and its noise_mask."""
    replace_p, filler_per_token = _noise_rates(noise_fraction, filler_share)
    insert_p = filler_per_token / 2.0  # spans of 1..3 words, 2 on average
    ids, labels = sample.input_ids.tolist(), sample.labels.tolist()
    start = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    content = [i for i in range(len(tokenizer.vocab)) if i >= 4]  # every non-special id
    filler = [tokenizer.token_to_id[w] for w in FILLER_WORDS]
    out_ids, out_noise = ids[:start], [False] * start
    response = ids[start:-1]  # eos (the last token) is kept as is
    for token in response:
        if rng.random() < insert_p:
            span = [rng.choice(filler) for _ in range(rng.randint(1, 3))]
            out_ids.extend(span)
            out_noise.extend([True] * len(span))
        if rng.random() < replace_p:
            out_ids.append(rng.choice([c for c in content if c != token]))
            out_noise.append(True)
        else:
            out_ids.append(token)
            out_noise.append(False)
    out_ids.append(ids[-1])
    out_noise.append(False)
    new_ids = torch.tensor(out_ids, dtype=torch.int64)
    new_labels = new_ids.clone()
    new_labels[:start] = IGNORE_INDEX
    return TokenizedSample(new_ids, new_labels, torch.tensor(out_noise, dtype=torch.bool))


@dataclass(frozen=True)
class ArithmeticSFT:
    """The generated set.

    Attributes:
        problems: the clean problems, one per sample.
        samples: the tokenised (noisy) samples; ``sample.noise_mask`` marks the corrupted tokens.
        tokenizer: the :class:`ArithmeticTokenizer` the ids belong to.
        noise_fraction: corrupted tokens / response tokens before eos, as drawn.
    """

    problems: list[ArithmeticProblem]
    samples: list[TokenizedSample]
    tokenizer: ArithmeticTokenizer
    noise_fraction: float

    def records(self, *, tokenised: bool = True) -> list[dict]:
        """JSON-ready records: ``{"input_ids", "labels", "noise_mask"}`` or ``{"prompt", "response", "answer"}``
        (the response text as corrupted; it tokenises back to the same ids)."""
        out = []
        for problem, sample in zip(self.problems, self.samples):
            if tokenised:
                out.append({"input_ids": sample.input_ids.tolist(), "labels": sample.labels.tolist(),
                            "noise_mask": sample.noise_mask.int().tolist()})
            else:
                start = int((sample.labels != IGNORE_INDEX).nonzero()[0])
                response = self.tokenizer.decode(sample.input_ids[start:-1].tolist())
                out.append({"prompt": problem.prompt, "response": response, "answer": problem.answer})
        return out

    def to_jsonl(self, path: str | os.PathLike, *, tokenised: bool = False) -> None:
        """Write :meth:`records` to ``path``, one JSON object per line (atomically: temp file + rename)."""
        with atomic_open(path, "w", encoding="utf-8") as handle:
            for record in self.records(tokenised=tokenised):
                handle.write(json.dumps(record) + "\n")


def make_arithmetic_sft(
    n_samples: int,
    *,
    noise_fraction: float = 0.2,
    filler_share: float = 0.5,
    seed: int = 0,
    operations=OPERATIONS,
    max_operand: int = 20,
) -> ArithmeticSFT:
    """``n_samples`` problems with corrupted responses.

    Args:
        n_samples: number of samples.
        noise_fraction: expected fraction of corrupted response tokens (eos excluded), in [0, 0.9].
        filler_share: fraction of the corrupted tokens that are inserted filler (the rest are random label
            tokens), in [0, 1].
        seed: the only source of randomness.
        operations: subset of ("add", "sub", "mul").
        max_operand: largest addition / subtraction operand.
    """
    if (isinstance(noise_fraction, bool) or not isinstance(noise_fraction, (int, float))
            or not 0 <= noise_fraction <= 0.9):
        raise ValueError(f"noise_fraction must be a number in [0, 0.9], got {noise_fraction!r}")
    if isinstance(filler_share, bool) or not isinstance(filler_share, (int, float)) or not 0 <= filler_share <= 1:
        raise ValueError(f"filler_share must be a number in [0, 1], got {filler_share!r}")
    tokenizer = arithmetic_tokenizer()
    problems = make_problems(n_samples, seed=seed, operations=operations, max_operand=max_operand)
    rng = random.Random(f"noise-{seed}")
    samples = [
        corrupt(encode_problem(p, tokenizer), rng, tokenizer, noise_fraction=noise_fraction, filler_share=filler_share)
        for p in problems
    ]
    labelled = sum(int((s.labels != IGNORE_INDEX).sum()) - 1 for s in samples)  # eos excluded
    noisy = sum(int(s.noise_mask.sum()) for s in samples)
    return ArithmeticSFT(problems, samples, tokenizer, noisy / labelled if labelled else 0.0)
