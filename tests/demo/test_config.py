"""Demo presets and knob validation."""

from __future__ import annotations

import dataclasses

import pytest

from xtf_kernels.demo.config import BASES
from xtf_kernels.demo.config import DEFAULT
from xtf_kernels.demo.config import PRESETS
from xtf_kernels.demo.config import QUICK
from xtf_kernels.demo.config import DemoConfig


def test_presets_are_valid_and_quick_is_smaller():
    assert PRESETS == {"default": DEFAULT, "quick": QUICK}
    assert (QUICK.name, DEFAULT.name, QUICK.base, DEFAULT.base) == ("quick", "default", "quick", "full")
    for field in ("train_samples", "trusted_samples", "heldout_problems", "memory_repeats"):
        assert getattr(QUICK, field) < getattr(DEFAULT, field), field
    assert BASES["quick"].documents < BASES["full"].documents
    assert QUICK.noise_fraction == DEFAULT.noise_fraction == 0.15 and QUICK.token_cleaning_k == 0.6


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
        ({"noise_fraction": 0.6}, r"noise_fraction must be a number in \[0.0, 0.5\]"),
        ({"token_cleaning_k": 0.0}, "token_cleaning_k must be a number"),
        ({"lr": "1e-3"}, "lr must be a number"),
        ({"base": "huge"}, r"base must be one of \('full', 'quick'\)"),
        ({"memory_repeats": 0}, "memory_repeats must be an int >= 1"),
        ({"highlighted_samples": -1}, "highlighted_samples must be an int >= 0"),
    ],
)
def test_bad_knobs_name_themselves(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(QUICK, **changes)
