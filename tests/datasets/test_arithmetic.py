"""The synthetic arithmetic SFT set: deterministic, correct clean problems, noise exactly where the mask says."""

from __future__ import annotations

import pytest
import torch

from xtf_kernels.datasets import make_arithmetic_sft
from xtf_kernels.datasets import make_problems
from xtf_kernels.datasets import parse_answer
from xtf_kernels.datasets.arithmetic import FILLER_WORDS
from xtf_kernels.datasets.arithmetic import encode_problem
from xtf_kernels.datasets.samples import sample_from_text


def test_deterministic_for_a_seed():
    a, b, c = make_arithmetic_sft(30, seed=3), make_arithmetic_sft(30, seed=3), make_arithmetic_sft(30, seed=4)
    assert all(torch.equal(x.input_ids, y.input_ids) and torch.equal(x.noise_mask, y.noise_mask)
               for x, y in zip(a.samples, b.samples))
    assert any(not torch.equal(x.input_ids, y.input_ids) for x, y in zip(a.samples, c.samples))


def test_clean_problems_state_the_right_answer():
    for problem in make_problems(200, seed=1):
        numbers = [int(w) for w in problem.prompt.split() if w.isdigit()]
        expected = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b}
        assert problem.answer == expected[problem.operation](*numbers)
        assert parse_answer(problem.response) == problem.answer


@pytest.mark.parametrize("noise_fraction", [0.0, 0.1, 0.3])
def test_noise_fraction_and_mask(noise_fraction):
    data = make_arithmetic_sft(400, noise_fraction=noise_fraction, seed=0)
    assert data.noise_fraction == pytest.approx(noise_fraction, abs=0.02)
    tokenizer = data.tokenizer
    replaced = inserted = 0
    for problem, sample in zip(data.problems, data.samples):
        clean = encode_problem(problem, tokenizer)
        # prompt and eos are never corrupted; the prompt is never labelled
        start = int((clean.labels != -100).nonzero()[0])
        assert torch.equal(sample.input_ids[:start], clean.input_ids[:start])
        assert bool((sample.labels[:start] == -100).all()) and not sample.noise_mask[:start].any()
        assert sample.input_ids[-1] == tokenizer.eos_token_id and not sample.noise_mask[-1]
        assert torch.equal(sample.labels[start:], sample.input_ids[start:])
        # every inserted token is noise; the other noise tokens are replacements
        inserted_here = len(sample) - len(clean)
        assert int(sample.noise_mask.sum()) >= inserted_here >= 0
        inserted += inserted_here
        replaced += int(sample.noise_mask.sum()) - inserted_here
    if noise_fraction == 0:
        assert replaced == inserted == 0
    else:
        assert replaced > 0 and inserted > 0


def test_replaced_tokens_differ_and_clean_tokens_match():
    data = make_arithmetic_sft(200, noise_fraction=0.3, filler_share=0.0, seed=2)  # replacements only
    for problem, sample in zip(data.problems, data.samples):
        clean = encode_problem(problem, data.tokenizer)
        assert len(sample) == len(clean)
        differs = sample.input_ids != clean.input_ids
        assert torch.equal(differs, sample.noise_mask)


def test_fillers_only_insert_filler_words():
    data = make_arithmetic_sft(200, noise_fraction=0.3, filler_share=1.0, seed=2)  # insertions only
    filler_ids = {data.tokenizer.token_to_id[w] for w in FILLER_WORDS}
    for problem, sample in zip(data.problems, data.samples):
        clean = encode_problem(problem, data.tokenizer)
        assert all(int(t) in filler_ids for t in sample.input_ids[sample.noise_mask])
        assert torch.equal(sample.input_ids[~sample.noise_mask], clean.input_ids)


def test_text_records_tokenise_back_to_the_same_ids(tmp_path):
    data = make_arithmetic_sft(50, seed=5)
    for record, sample in zip(data.records(tokenised=False), data.samples):
        again = sample_from_text(record["prompt"], record["response"], data.tokenizer)
        assert torch.equal(again.input_ids, sample.input_ids) and torch.equal(again.labels, sample.labels)
    data.to_jsonl(tmp_path / "d.jsonl", tokenised=True)
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 50


def test_bad_arguments():
    with pytest.raises(ValueError, match="noise_fraction"):
        make_arithmetic_sft(3, noise_fraction=0.95)
    with pytest.raises(ValueError, match="filler_share"):
        make_arithmetic_sft(3, filler_share=-0.1)
    with pytest.raises(ValueError, match="operations"):
        make_problems(3, operations=("div",))
    with pytest.raises(ValueError, match="max_operand"):
        make_problems(3, max_operand=1)
