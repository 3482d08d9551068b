"""The demo's data splits: sizes, ground truth, held-out disjointness, determinism."""

from __future__ import annotations

import pytest
import torch

from xtf_kernels.datasets import IGNORE_INDEX
from xtf_kernels.demo.config import QUICK
from xtf_kernels.demo.data import as_text_sample
from xtf_kernels.demo.data import build_data
from xtf_kernels.demo.data import heldout_problems

SMALL = QUICK.replace(train_samples=40, pretrain_samples=30, warmup_samples=20, heldout_problems=25)


@pytest.fixture(scope="module")
def data():
    return build_data(SMALL)


def test_sizes_and_roles(data):
    assert (len(data.train.samples), len(data.pretrain), len(data.warmup), len(data.heldout)) == (40, 30, 20, 25)
    assert sum(int(s.noise_mask.sum()) for s in data.train.samples) > 0
    assert all(not s.noise_mask.any() for s in data.warmup)
    assert 0.1 < data.train.noise_fraction < 0.3
    for sample in data.warmup:  # SFT: prompt unlabelled
        assert (sample.labels == IGNORE_INDEX).sum() > 5


def test_pretraining_text_labels_every_token(data):
    for sample in data.pretrain:
        assert torch.equal(sample.labels, sample.input_ids)
        assert not sample.noise_mask.any()


def test_as_text_sample_keeps_ids_and_labels_them_all(data):
    sample = data.warmup[0]
    text = as_text_sample(sample)
    assert torch.equal(text.input_ids, sample.input_ids) and torch.equal(text.labels, sample.input_ids)


def test_heldout_prompts_occur_in_no_other_split(data):
    used = {p.prompt for p in data.train.problems}
    used |= {data.tokenizer.decode(s.input_ids[1:].tolist()) for s in [*data.pretrain, *data.warmup]}
    heldout = [p.prompt for p in data.heldout]
    assert len(set(heldout)) == len(heldout)
    assert not set(heldout) & {p.prompt for p in data.train.problems}
    for prompt in heldout:
        assert not any(text.startswith(prompt) for text in used)


def test_heldout_samples_are_the_clean_problems(data):
    samples = data.heldout_samples
    assert len(samples) == 25
    for problem, sample in zip(data.heldout, samples):
        response = sample.input_ids[sample.labels != IGNORE_INDEX][:-1]  # without eos
        assert data.tokenizer.decode(response.tolist()).replace(" ", "") == problem.response.replace(" ", "")


def test_heldout_draws_again_when_the_first_draw_is_excluded():
    first = heldout_problems(5, seed=7, exclude=set())
    again = heldout_problems(5, seed=7, exclude={p.prompt for p in first})
    assert not {p.prompt for p in first} & {p.prompt for p in again} and len(again) == 5


def test_same_seed_same_data_other_seed_other_data(data):
    same = build_data(SMALL)
    other = build_data(SMALL.replace(seed=1))
    assert all(torch.equal(a.input_ids, b.input_ids) and torch.equal(a.noise_mask, b.noise_mask)
               for a, b in zip(data.train.samples, same.train.samples))
    assert [p.prompt for p in data.heldout] == [p.prompt for p in same.heldout]
    assert [p.prompt for p in data.train.problems] != [p.prompt for p in other.train.problems]
