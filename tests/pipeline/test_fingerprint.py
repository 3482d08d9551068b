"""Fingerprints change with any change of the tokenised data, the weights or the config."""

from __future__ import annotations

import pytest
import torch

from tests.methods import tiny
from xtf_kernels.pipeline import config_fingerprint
from xtf_kernels.pipeline import data_fingerprint
from xtf_kernels.pipeline import model_fingerprint

pytest.importorskip("transformers")


def test_data_fingerprint_sees_ids_labels_order_and_boundaries():
    samples = tiny.data().samples
    base = data_fingerprint(samples)
    assert data_fingerprint(list(samples)) == base
    first = samples[0]
    relabelled = [first.with_labels(torch.full_like(first.labels, -100)), *samples[1:]]
    merged = type(first)(torch.cat([samples[0].input_ids, samples[1].input_ids]),
                         torch.cat([samples[0].labels, samples[1].labels]))
    for other in (relabelled, samples[::-1], samples[:-1], [merged, *samples[2:]]):
        assert data_fingerprint(other) != base


def test_model_fingerprint_sees_weights_and_config_but_not_the_attention_implementation():
    model = tiny.model("llama")
    base = model_fingerprint(model)
    assert model_fingerprint(tiny.model("llama")) == base
    assert model_fingerprint(tiny.perturbed(model, seed=0, scale=1e-3)) != base
    assert model_fingerprint(tiny.model("llama", seed=1)) != base
    model.set_attn_implementation("eager")
    assert model_fingerprint(model) == base


def test_config_fingerprint():
    assert config_fingerprint({"k": 0.6}, {"base": "a"}) == config_fingerprint({"k": 0.6}, {"base": "a"})
    assert config_fingerprint({"k": 0.6}, {"base": "a"}) != config_fingerprint({"k": 0.7}, {"base": "a"})
    assert config_fingerprint({"k": 0.6}, {"base": "a"}) != config_fingerprint({"k": 0.6}, {"base": "b"})
