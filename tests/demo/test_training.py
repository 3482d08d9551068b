"""The held-out loss through the fused loss equals eager cross-entropy of the logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xtf_kernels.datasets import IGNORE_INDEX
from xtf_kernels.datasets import collate
from xtf_kernels.datasets import make_arithmetic_sft
from xtf_kernels.datasets import tiny_causal_lm
from xtf_kernels.demo.training import heldout_loss


def test_heldout_loss_matches_eager_cross_entropy_of_the_logits():
    data = make_arithmetic_sft(9, seed=3)
    model = tiny_causal_lm("llama", vocab_size=len(data.tokenizer), hidden_size=16, num_layers=1, num_heads=2,
                           num_kv_heads=1)
    batch = collate(data.samples, 0)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    targets = batch.labels[:, 1:]
    per_token = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                ignore_index=IGNORE_INDEX, reduction="none").view(targets.shape)
    labelled = (targets != IGNORE_INDEX).sum(1)
    expected = float(per_token.sum()) / int(labelled.sum())
    mean, sums, counts = heldout_loss(model, data.samples, batch_size=4)  # 9 samples: batches of 4, 4, 1
    assert mean == pytest.approx(expected, rel=1e-5)
    assert sums == pytest.approx(per_token.sum(1).tolist(), rel=1e-5)
    assert counts == labelled.tolist()
    assert not model.training


def test_heldout_loss_refuses_an_empty_list():
    model = tiny_causal_lm("llama", vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1)
    with pytest.raises(ValueError, match="samples must not be empty"):
        heldout_loss(model, [])


def test_heldout_loss_refuses_a_sample_without_labelled_tokens():
    data = make_arithmetic_sft(5, seed=3)
    model = tiny_causal_lm("llama", vocab_size=len(data.tokenizer), hidden_size=16, num_layers=1, num_heads=2,
                           num_kv_heads=1)
    samples = list(data.samples)
    samples[3] = samples[3].with_labels(torch.full_like(samples[3].labels, IGNORE_INDEX))
    with pytest.raises(ValueError, match=r"samples\[3\] has no labelled token"):
        heldout_loss(model, samples, batch_size=2)
