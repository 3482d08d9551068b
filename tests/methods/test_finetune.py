"""The fused-loss SFT loop: its loss equals transformers' own causal-LM loss, and training lowers it."""

from __future__ import annotations

import pytest
import torch

from tests.methods import tiny
from xtf_kernels.datasets import collate
from xtf_kernels.methods import causal_lm_loss
from xtf_kernels.methods import finetune

pytest.importorskip("transformers")


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_causal_lm_loss_matches_transformers_loss(arch):
    model = tiny.model(arch)
    batch = collate(tiny.data().samples[:5])
    with torch.no_grad():
        expected = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
        actual = causal_lm_loss(model, batch)
    torch.testing.assert_close(actual, expected.float(), atol=1e-5, rtol=1e-5)


def test_training_lowers_the_loss():
    model = tiny.model("llama", num_layers=1)
    samples = tiny.data().samples
    batch = collate(samples)
    with torch.no_grad():
        before = float(causal_lm_loss(model, batch))
    losses = finetune(model, samples, epochs=3, lr=1e-2, batch_size=4, seed=0)
    assert len(losses) == 9
    with torch.no_grad():
        assert float(causal_lm_loss(model, batch)) < before
    assert not model.training


def test_finetune_is_deterministic_for_a_seed():
    samples = tiny.data().samples
    first, second = tiny.model("qwen2", num_layers=1), tiny.model("qwen2", num_layers=1)
    assert finetune(first, samples, lr=1e-2, batch_size=4, seed=7) == finetune(second, samples, lr=1e-2,
                                                                                 batch_size=4, seed=7)


def test_finetune_validation():
    with pytest.raises(ValueError, match="empty"):
        finetune(tiny.model(), [])
    with pytest.raises(ValueError, match="epochs"):
        finetune(tiny.model(), tiny.data().samples, epochs=0)
