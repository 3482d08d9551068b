"""embed_texts against a per-text float64 forward of the same model; loading from a local directory."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from xtf_kernels.fidelity import embed_texts  # noqa: E402
from xtf_kernels.fidelity import load_text_encoder  # noqa: E402

from .tiny_text_encoder import save_tiny_model  # noqa: E402
from .tiny_text_encoder import tiny_causal_lm  # noqa: E402
from .tiny_text_encoder import tiny_tokenizer  # noqa: E402

TEXTS = ["the cat sat on the mat", "dog", "a big red dog ran far", "small blue cat", "the the the", "zebra cat"]


def reference_embedding(model, tokenizer, text):
    """Mean over one unpadded text's last hidden states, the model run in float64."""
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    model64 = tiny_causal_lm().double()
    model64.load_state_dict(model.state_dict())
    with torch.no_grad():
        return model64.model(input_ids=ids).last_hidden_state[0].mean(dim=0)


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_embeddings_match_each_text_embedded_alone(batch_size):
    model, tokenizer = tiny_causal_lm(), tiny_tokenizer()
    embeddings = embed_texts(TEXTS, model, tokenizer, batch_size=batch_size)
    assert embeddings.shape == (len(TEXTS), 16) and embeddings.dtype == torch.float32
    expected = torch.stack([reference_embedding(model, tokenizer, text) for text in TEXTS])
    torch.testing.assert_close(embeddings.double(), expected, atol=2e-5, rtol=1e-4)
    assert not embeddings.is_inference()  # usable by the estimator's autograd


def test_padding_side_of_the_tokenizer_does_not_matter():
    model, tokenizer = tiny_causal_lm(), tiny_tokenizer()
    right = embed_texts(TEXTS, model, tokenizer, batch_size=8)
    tokenizer.padding_side = "left"
    torch.testing.assert_close(embed_texts(TEXTS, model, tokenizer, batch_size=8), right)


def test_truncation_and_a_base_model_without_head():
    model, tokenizer = tiny_causal_lm(), tiny_tokenizer()
    truncated = embed_texts(["the cat sat on the mat"], model.model, tokenizer, max_length=2)
    torch.testing.assert_close(truncated[0].double(), reference_embedding(model, tokenizer, "the cat"),
                               atol=2e-5, rtol=1e-4)


def test_training_mode_is_restored():
    model = tiny_causal_lm().train()
    embed_texts(TEXTS[:2], model, tiny_tokenizer())
    assert model.training


@pytest.mark.parametrize(
    "texts, kwargs, error, match",
    [
        ("one string", {}, TypeError, "sequence of strings"),
        (["ok", 3], {}, TypeError, r"texts\[1\] must be a str"),
        ([], {}, ValueError, "texts is empty"),
        (["cat", ""], {}, ValueError, r"1 text\(s\) have no tokens \(first indices: \[1\]\)"),
        (["cat"], {"batch_size": 0}, ValueError, "batch_size"),
        (["cat"], {"max_length": 1.5}, TypeError, "max_length"),
    ],
)
def test_bad_texts_are_refused(texts, kwargs, error, match):
    with pytest.raises(error, match=match):
        embed_texts(texts, tiny_causal_lm(), tiny_tokenizer(), **kwargs)


def test_load_text_encoder_round_trip(tmp_path):
    save_tiny_model(tmp_path / "model")
    model, tokenizer = load_text_encoder(tmp_path / "model")
    assert type(model).__name__ == "LlamaModel" and not model.training  # the head is dropped
    expected = embed_texts(TEXTS, tiny_causal_lm(), tiny_tokenizer())
    torch.testing.assert_close(embed_texts(TEXTS, model, tokenizer), expected)


def test_load_text_encoder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_encoder(tmp_path / "missing")
    (tmp_path / "file.bin").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        load_text_encoder(tmp_path / "file.bin")
    with pytest.raises(ValueError, match="cannot load a transformers model from"):
        load_text_encoder(tmp_path)
    model_only = tmp_path / "no_tokenizer"
    tiny_causal_lm().save_pretrained(model_only)
    with pytest.raises(ValueError, match="cannot load a tokenizer from"):
        load_text_encoder(model_only)


def test_numeric_estimator_does_not_import_transformers():
    code = (
        "import sys, numpy as np\n"
        "from xtf_kernels.fidelity import estimate_tv\n"
        "estimate_tv(np.random.randn(100, 2), np.random.randn(100, 2), classifier='quadratic')\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
