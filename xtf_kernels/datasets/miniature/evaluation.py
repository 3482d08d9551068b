"""What a model fine-tuned on the miniature writes, and how it is scored.

:func:`generate` decodes greedily from ``<|bos|> <|user|> question <|assistant|>`` (left-padded batches,
transformers' ``generate``). On the generated responses:
- exact match: the first ``The answer is N.`` states the problem's answer;
- format adherence: the response is the SFT template (two steps, then the answer; the boilerplate
  openers / closers of pretraining allowed around it) for two-step problems;
- noise reappearing: per harmful kind, the fraction of responses containing it: a garbled artefact, a
  story sentence's words (off-domain) or a step whose stated result is wrong (wrong number);
- retention: exact match on the pretraining tasks (one-step arithmetic, fact questions) after fine-tuning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from . import world
from .encoding import prompt_ids
from .text import Document
from .tokenizer import MiniatureTokenizer

_ANSWER = re.compile(r"The answer is (\d+)\.")
_STEP = re.compile(r"Step \d+: (\d+) ([+-]) (\d+) = (\d+)\.")
_TWO_STEP = re.compile(r"^ Step 1: \d+ [+-] \d+ = \d+\. Step 2: \d+ [+-] \d+ = \d+\. The answer is \d+\.$")
_OFF_DOMAIN_WORDS = frozenset(w for phrase in (*world.ANIMALS, *world.PLACES, *world.OBJECTS, *world.ADJECTIVES)
                              for w in phrase.split() if w not in ("the", "a"))


@torch.no_grad()
def generate(model, tokenizer: MiniatureTokenizer, documents: Sequence[Document], *, max_new_tokens: int = 48,
             batch_size: int = 128) -> list[str]:
    """Greedy response text (specials dropped, up to eos) to each document's question."""
    device = next(model.parameters()).device
    prompts = [prompt_ids(d, tokenizer) for d in documents]
    out: list[str] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.int64)
            mask = torch.zeros((len(chunk), width), dtype=torch.int64)
            for row, p in enumerate(chunk):
                ids[row, width - len(p):] = torch.tensor(p)
                mask[row, width - len(p):] = 1
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                       max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id)
            for row in generated[:, width:].tolist():
                if tokenizer.eos_token_id in row:
                    row = row[: row.index(tokenizer.eos_token_id)]
                out.append(tokenizer.decode(row))
    finally:
        model.train(was_training)
    return out


def parse_answer(text: str) -> int | None:
    match = _ANSWER.search(text)
    return int(match.group(1)) if match else None


def strip_boilerplate(text: str) -> str:
    """``text`` without one leading opener and one trailing closer of :mod:`.world`."""
    for opener in world.OPENERS:
        if text.startswith(" " + opener):
            text = text[len(opener) + 1:]
            break
    for closer in world.CLOSERS:
        if text.endswith(" " + closer):
            text = text[: -len(closer) - 1]
            break
    return text


def follows_format(text: str) -> bool:
    """The two-step template, boilerplate allowed around it."""
    return bool(_TWO_STEP.match(strip_boilerplate(text)))


def noise_in(text: str) -> dict[str, bool]:
    """Which harmful kinds ``text`` contains: garbled artefact, off-domain words, a wrong step result."""
    wrong = any((int(a) + int(b) if op == "+" else int(a) - int(b)) != int(c) for a, op, b, c in _STEP.findall(text))
    words = set(re.findall(r"[A-Za-z]+", text))
    return {"wrong_number": wrong, "off_domain": bool(words & _OFF_DOMAIN_WORDS),
            "garbled": any(artefact in text for artefact in world.ARTEFACTS)}


def score_responses(responses: Sequence[str], documents: Sequence[Document]) -> dict:
    """Per-problem correctness (list of 0/1) and the rates: exact_match, format, noise per kind."""
    if len(responses) != len(documents) or not documents:
        raise ValueError(f"need one response per document, got {len(responses)} for {len(documents)}")
    correct = [int(parse_answer(r) == d.answer) for r, d in zip(responses, documents)]
    noise = [noise_in(r) for r in responses]
    n = len(documents)
    return {"correct": correct, "exact_match": sum(correct) / n,
            "format": sum(follows_format(r) for r in responses) / n,
            "noise_reappears": {kind: sum(x[kind] for x in noise) / n for kind in noise[0]}}


def fact_correct(response: str, document: Document) -> bool:
    return response.strip() == document.response_text.strip()


def retention(model, tokenizer: MiniatureTokenizer, one_step: Sequence[Document], facts: Sequence[Document]) -> dict:
    """Exact match on pretraining tasks: one-step arithmetic (the answer) and fact questions (the sentence)."""
    arithmetic = generate(model, tokenizer, one_step, max_new_tokens=32)
    answers = generate(model, tokenizer, facts, max_new_tokens=16)
    arithmetic_em = sum(parse_answer(r) == d.answer for r, d in zip(arithmetic, one_step)) / max(1, len(one_step))
    fact_em = sum(fact_correct(r, d) for r, d in zip(answers, facts)) / max(1, len(facts))
    return {"one_step": arithmetic_em, "facts": fact_em, "mean": (arithmetic_em + fact_em) / 2}
