"""The miniature's generated text: kinds, arithmetic, the pretraining mix, noise injection and its ground truth."""

from __future__ import annotations

import random
import re

import pytest
import torch

from xtf_kernels.datasets.miniature import KIND_CODE
from xtf_kernels.datasets.miniature import KINDS
from xtf_kernels.datasets.miniature import NOISE_KINDS
from xtf_kernels.datasets.miniature import MiniatureTokenizer
from xtf_kernels.datasets.miniature import corrupt
from xtf_kernels.datasets.miniature import encode_document
from xtf_kernels.datasets.miniature import inject_noise
from xtf_kernels.datasets.miniature import make_heldout
from xtf_kernels.datasets.miniature import make_sft
from xtf_kernels.datasets.miniature import world
from xtf_kernels.datasets.miniature.text import pretraining_document
from xtf_kernels.datasets.miniature.text import two_step_problem

STEP = re.compile(r"Step \d: (\d+) ([+-]) (\d+) = (\d+)\.")


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    documents = [pretraining_document(rng) for _ in range(1500)]
    return MiniatureTokenizer.train([d.prompt_text + d.response_text for d in documents], vocab_size=800)


def _truth(text: str) -> list[tuple[int, str, int, int]]:
    return [(int(a), op, int(b), int(c)) for a, op, b, c in STEP.findall(text)]


def test_two_step_problems_are_correct_and_in_range():
    rng = random.Random(1)
    for _ in range(300):
        document = two_step_problem(rng)
        steps = _truth(document.response_text)
        assert len(steps) == 2 and steps[1][0] == steps[0][3]
        for a, op, b, c in steps:
            assert c == (a + b if op == "+" else a - b) and c >= 0
        assert 1 <= steps[0][3] <= 18 and document.answer == steps[1][3]
        assert document.response_text.endswith(f" The answer is {document.answer}.")
        assert {kind for _, kind in document.response} <= {"template", "work", "answer"}


def test_pretraining_mix_has_every_kind_of_material():
    rng = random.Random(2)
    documents = [pretraining_document(rng) for _ in range(2000)]
    kinds = {d.kind for d in documents}
    assert kinds == {"story", "web", "fact", "drill", "one_step", "two_step"}
    share = sum(d.kind == "two_step" for d in documents) / len(documents)
    assert 0.03 < share < 0.07
    segment_kinds = {kind for d in documents for _, kind in d.response}
    assert {"garbled", "boilerplate"} <= segment_kinds  # the material of two noise kinds occurs in pretraining
    text = " ".join(d.response_text for d in documents)
    assert any(artefact in text for artefact in world.ARTEFACTS)
    assert any(opener in text for opener in world.OPENERS)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_one_event_of_each_kind(kind):
    rng = random.Random(3)
    for _ in range(100):
        clean = two_step_problem(rng)
        noisy = corrupt(clean, kind, rng)
        kinds = [k for _, k in noisy.response]
        assert kind in kinds and not set(kinds) & (set(NOISE_KINDS) - {kind})
        if kind == "wrong_number":
            # one step states a wrong result; the later steps compute on it; the answer differs from the truth
            steps = _truth(noisy.response_text)
            wrong = [i for i, (a, op, b, c) in enumerate(steps) if c != (a + b if op == "+" else a - b)]
            assert len(wrong) == 1
            assert all(steps[i + 1][0] == steps[i][3] for i in range(len(steps) - 1))
            assert int(re.search(r"answer is (\d+)", noisy.response_text).group(1)) == steps[-1][3] != clean.answer
            marked = [text for text, k in noisy.response if k == "wrong_number"]
            assert marked and all(text.isdigit() for text in marked)
        else:
            # insertions only: removing the inserted segments gives the clean response back
            kept = "".join(text for text, k in noisy.response if k != kind)
            assert kept == clean.response_text


def test_noise_reaches_its_fraction_with_masks_that_match_the_kinds(tokenizer):
    for fraction in (0.0, 0.05, 0.15):
        sft = make_sft(tokenizer, 120, noise=fraction, seed=4)
        harmful = sum(sft.kind_fraction(k) for k in NOISE_KINDS)
        assert fraction <= harmful < fraction + 0.02
        for sample, kinds in zip(sft.samples, sft.kinds):
            expected = torch.zeros_like(sample.noise_mask)
            for kind in NOISE_KINDS:
                expected |= kinds == KIND_CODE[kind]
            assert torch.equal(sample.noise_mask, expected)
    assert make_sft(tokenizer, 120, noise=0.0, seed=4).kind_fraction("boilerplate") > 0


def test_inject_noise_rejects_a_bad_fraction(tokenizer):
    with pytest.raises(ValueError, match="fraction must be a number in"):
        inject_noise([], 0.9, tokenizer, random.Random(0))


def test_encoding_kinds_follow_the_segments(tokenizer):
    rng = random.Random(5)
    document = corrupt(corrupt(two_step_problem(rng, boilerplate=1.0), "garbled", rng), "off_domain", rng)
    encoded = encode_document(document, tokenizer, label_prompt=False)
    sample = encoded.sample
    assert (sample.labels[:encoded.prompt_length] == -100).all()
    assert torch.equal(sample.labels[encoded.prompt_length:], sample.input_ids[encoded.prompt_length:])
    assert int(encoded.kinds[-1]) == KIND_CODE["eos"] and int(sample.input_ids[-1]) == tokenizer.eos_token_id
    for kind in KINDS:
        ids = sample.input_ids[encoded.kinds == KIND_CODE[kind]][encoded.prompt_length:].tolist() \
            if kind == "clean" else sample.input_ids[encoded.kinds == KIND_CODE[kind]].tolist()
        expected = "".join(text for text, k in document.response if k == kind)
        if kind in ("clean", "eos"):
            continue
        assert tokenizer.decode(ids) == expected, kind
    everything = pretraining_document(random.Random(6))
    text = encode_document(everything, tokenizer, label_prompt=True).sample
    assert torch.equal(text.labels, text.input_ids)


def test_same_seed_same_pool_and_heldout_is_disjoint(tokenizer):
    first, again = make_sft(tokenizer, 50, noise=0.15, seed=7), make_sft(tokenizer, 50, noise=0.15, seed=7)
    assert [d.response for d in first.documents] == [d.response for d in again.documents]
    assert [d.prompt_text for d in make_sft(tokenizer, 50, noise=0.15, seed=8).documents] != \
        [d.prompt_text for d in first.documents]
    prompts = {d.prompt_text for d in first.documents}
    heldout = make_heldout(200, seed=7, exclude=prompts, retention=10)
    assert not prompts & {d.prompt_text for d in heldout.problems}
    assert len(heldout.one_step) == len(heldout.facts) == 10
    assert all(not s.noise_mask.any() for s in heldout.samples(tokenizer))
