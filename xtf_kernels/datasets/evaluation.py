"""Held-out exact-match accuracy of a causal LM on arithmetic problems, by greedy decoding."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

import torch

from .arithmetic import ArithmeticProblem
from .tokenizer import ArithmeticTokenizer

_ANSWER = re.compile(r"The answer is (-?\d+) \.")


def parse_answer(text: str) -> int | None:
    """The integer N of the first ``The answer is N .`` in ``text``, or None."""
    match = _ANSWER.search(text)
    return int(match.group(1)) if match else None


@torch.no_grad()
def greedy_responses(model, tokenizer: ArithmeticTokenizer, prompts: Sequence[str], *, max_new_tokens: int = 24,
                     batch_size: int = 64) -> list[str]:
    """Greedy continuation of ``<bos> prompt`` for each prompt, up to eos or ``max_new_tokens``, decoded.

    Prompts of equal token length are decoded together (no padding, so no position-id subtleties), with
    the model's KV cache and only the last position's logits (``logits_to_keep=1``).
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    device = next(model.parameters()).device
    encoded = [[tokenizer.bos_token_id, *tokenizer.encode(p)] for p in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, ids in enumerate(encoded):
        by_length[len(ids)].append(index)
    out: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for indices in by_length.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                ids = torch.tensor([encoded[i] for i in chunk], device=device)
                generated = torch.empty(len(chunk), 0, dtype=torch.int64, device=device)
                finished = torch.zeros(len(chunk), dtype=torch.bool, device=device)
                past, step_input = None, ids
                for _ in range(max_new_tokens):
                    result = model(input_ids=step_input, past_key_values=past, use_cache=True, logits_to_keep=1)
                    past = result.past_key_values
                    next_token = result.logits[:, -1].argmax(-1)
                    next_token = torch.where(finished, torch.full_like(next_token, tokenizer.eos_token_id), next_token)
                    generated = torch.cat([generated, next_token[:, None]], dim=1)
                    finished |= next_token == tokenizer.eos_token_id
                    if bool(finished.all()):
                        break
                    step_input = next_token[:, None]
                for row, i in enumerate(chunk):
                    tokens = generated[row].tolist()
                    if tokenizer.eos_token_id in tokens:
                        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
                    out[i] = tokenizer.decode(tokens)
    finally:
        model.train(was_training)
    return out


def exact_match_accuracy(model, tokenizer: ArithmeticTokenizer, problems: Sequence[ArithmeticProblem], *,
                         max_new_tokens: int = 24, batch_size: int = 64) -> float:
    """Fraction of ``problems`` whose greedy response states the right answer (``The answer is N .``)."""
    if not problems:
        raise ValueError("problems must not be empty")
    responses = greedy_responses(model, tokenizer, [p.prompt for p in problems], max_new_tokens=max_new_tokens,
                                 batch_size=batch_size)
    correct = sum(parse_answer(text) == problem.answer for text, problem in zip(responses, problems))
    return correct / len(problems)
