"""Demo presets and knob validation."""

from __future__ import annotations

import dataclasses

import pytest

from xtf_kernels.demo.config import DEFAULT
from xtf_kernels.demo.config import PRESETS
from xtf_kernels.demo.config import QUICK
from xtf_kernels.demo.config import DemoConfig


def test_presets_are_valid_and_quick_is_smaller():
    assert PRESETS == {"default": DEFAULT, "quick": QUICK}
    assert (QUICK.name, DEFAULT.name) == ("quick", "default")
    for field in ("train_samples", "pretrain_steps", "finetune_steps", "hidden_size", "memory_repeats"):
        assert getattr(QUICK, field) < getattr(DEFAULT, field), field
    assert QUICK.noise_fraction == DEFAULT.noise_fraction == 0.2 and QUICK.token_cleaning_k == 0.6


def test_replace_ignores_none_and_validates():
    assert QUICK.replace(seed=None, train_samples=None) == QUICK
    assert QUICK.replace(seed=3).seed == 3 and QUICK.replace(seed=3).train_samples == QUICK.train_samples
    with pytest.raises(ValueError, match="train_samples must be an int >= 1"):
        QUICK.replace(train_samples=0)


def test_to_dict_has_every_field():
    assert set(QUICK.to_dict()) == {f.name for f in dataclasses.fields(DemoConfig)}
    assert DemoConfig(**QUICK.to_dict()) == QUICK


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"seed": -1}, "seed must be an int >= 0"),
        ({"seed": 1.0}, "seed must be an int"),
        ({"batch_size": True}, "batch_size must be an int"),
        ({"noise_fraction": 0.95}, r"noise_fraction must be a number in \[0.0, 0.9\]"),
        ({"token_cleaning_k": -0.1}, "token_cleaning_k must be a number"),
        ({"finetune_lr": "1e-3"}, "finetune_lr must be a number"),
        ({"arch": "gpt2"}, "arch must be 'llama' or 'qwen2'"),
        ({"hidden_size": 66}, r"num_heads \(4\) must divide hidden_size \(66\)"),
        ({"num_kv_heads": 3}, "multiple of num_kv_heads"),
        ({"memory_repeats": 0}, "memory_repeats must be an int >= 1"),
        ({"highlighted_samples": -1}, "highlighted_samples must be an int >= 0"),
    ],
)
def test_bad_knobs_name_themselves(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(QUICK, **changes)
