"""Capturing q / k through transformers' AttentionInterface: outputs unchanged, implementation restored,
layer choice validated."""

from __future__ import annotations

import pytest
import torch

from tests.methods import tiny
from xtf_kernels.datasets import collate
from xtf_kernels.methods.attention_capture import capture_attention_received
from xtf_kernels.methods.attention_capture import resolve_layers

pytest.importorskip("transformers")


def test_resolve_layers():
    assert resolve_layers("last", 4) == (3,)
    assert resolve_layers("mean", 3) == (0, 1, 2)
    assert resolve_layers([-1, 0], 4) == (0, 3)
    for bad in ([4], [], [0, 0], "first", [True]):
        with pytest.raises(ValueError, match="attn_layers"):
            resolve_layers(bad, 4)


@pytest.mark.parametrize("original", ["sdpa", "eager"])
def test_capture_leaves_outputs_and_implementation_unchanged(original):
    model = tiny.model("qwen2", attn_implementation=original)
    batch = collate(tiny.data().samples[:4])
    with torch.no_grad():
        expected = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        with capture_attention_received(model, layers="mean", attention_mask=batch.attention_mask) as recorder:
            assert model.config._attn_implementation == f"xtf_capture:{original}"
            actual = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert model.config._attn_implementation == original
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6)
    received = recorder.mean()
    assert received.shape == batch.input_ids.shape and received.dtype == torch.float32
    assert bool((received[batch.attention_mask == 0] == 0).all())  # padding keys receive nothing


def test_implementation_restored_after_an_error():
    model = tiny.model("llama")
    with pytest.raises(RuntimeError, match="boom"), capture_attention_received(model):
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


def test_missing_layers_are_reported():
    model = tiny.model("llama")
    with capture_attention_received(model, layers="last") as recorder:
        pass  # no forward pass ran
    with pytest.raises(RuntimeError, match="no attention was captured"):
        recorder.mean()
