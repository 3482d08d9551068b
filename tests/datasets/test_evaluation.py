"""Greedy decoding and exact match, with scripted models whose right answers are known."""

from __future__ import annotations

import pytest
import torch

from xtf_kernels.datasets import arithmetic_tokenizer
from xtf_kernels.datasets import exact_match_accuracy
from xtf_kernels.datasets import make_problems
from xtf_kernels.datasets import parse_answer
from xtf_kernels.datasets import tiny_causal_lm


class ScriptedLM(torch.nn.Module):
    """Answers each prompt with a fixed response: the KV-cache slot carries the sequence so far."""

    def __init__(self, tokenizer, responses: dict[tuple[int, ...], list[int]]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.vocab = len(tokenizer)
        self.responses = responses

    def forward(self, input_ids, past_key_values=None, use_cache=True, logits_to_keep=1):
        sequence = input_ids if past_key_values is None else torch.cat([past_key_values, input_ids], 1)
        logits = torch.zeros(sequence.shape[0], 1, self.vocab)
        for row, ids in enumerate(sequence.tolist()):
            for prompt, response in self.responses.items():
                if tuple(ids[: len(prompt)]) == prompt:
                    step = min(len(ids) - len(prompt), len(response) - 1)  # eos again once done
                    logits[row, 0, response[step]] = 1.0
        return type("Out", (), {"logits": logits, "past_key_values": sequence})()


def scripted(tokenizer, problems, wrong_every: int = 0):
    responses = {}
    for i, p in enumerate(problems):
        answer = p.answer + (1 if wrong_every and i % wrong_every == 0 else 0)
        text = p.response.replace(f"is {p.answer} .", f"is {answer} .")
        responses[tuple([tokenizer.bos_token_id, *tokenizer.encode(p.prompt)])] = [
            *tokenizer.encode(text), tokenizer.eos_token_id]
    return ScriptedLM(tokenizer, responses)


def test_exact_match_of_scripted_models():
    tokenizer = arithmetic_tokenizer()
    problems = make_problems(20, seed=9)
    assert exact_match_accuracy(scripted(tokenizer, problems), tokenizer, problems, batch_size=3) == 1.0
    assert exact_match_accuracy(scripted(tokenizer, problems, wrong_every=4), tokenizer, problems) == 0.75


def test_parse_answer():
    assert parse_answer("Tom has 3 + 4 = 7 pens . The answer is 7 .") == 7
    assert parse_answer("The answer is 1 2 .") is None  # digits as separate words are not a number
    assert parse_answer("no answer") is None


def test_random_tiny_model_runs_and_is_deterministic():
    pytest.importorskip("transformers")
    tokenizer = arithmetic_tokenizer()
    problems = make_problems(4, seed=0)
    first = tiny_causal_lm("qwen2", vocab_size=len(tokenizer), num_layers=1, hidden_size=32)
    second = tiny_causal_lm("qwen2", vocab_size=len(tokenizer), num_layers=1, hidden_size=32)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert exact_match_accuracy(first, tokenizer, problems, max_new_tokens=4) == 0.0
    with pytest.raises(ValueError, match="problems"):
        exact_match_accuracy(first, tokenizer, [])
    with pytest.raises(ValueError, match="arch"):
        tiny_causal_lm("gpt2", vocab_size=10)
