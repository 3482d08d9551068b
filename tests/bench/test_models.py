import pytest

from xtf_kernels.bench.models import MODEL_HEADS
from xtf_kernels.bench.models import model_head


def test_heads_have_positive_shapes_and_matching_names():
    for name, head in MODEL_HEADS.items():
        assert head.name == name
        assert head.hidden > 0 and head.vocab > 0
        assert head.softcap is None or head.softcap > 0
        assert head.source


@pytest.mark.parametrize(
    ("name", "hidden", "vocab", "softcap"),
    [("llama3-8b", 4096, 128256, None), ("gemma2-2b", 2304, 256000, 30.0), ("qwen2.5-7b", 3584, 152064, None),
     ("llama3.2-1b", 2048, 128256, None)],
)
def test_published_head_shapes(name, hidden, vocab, softcap):
    head = model_head(name)
    assert (head.hidden, head.vocab, head.softcap) == (hidden, vocab, softcap)


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="llama3-8b"):
        model_head("llama-9000")
