"""The miniature's tokenizer, its cached base (built once, validated on read) and its evaluation helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from xtf_kernels.datasets.miniature import SPECIAL_TOKENS
from xtf_kernels.datasets.miniature import BaseConfig
from xtf_kernels.datasets.miniature import MiniatureTokenizer
from xtf_kernels.datasets.miniature import follows_format
from xtf_kernels.datasets.miniature import generate
from xtf_kernels.datasets.miniature import load_base
from xtf_kernels.datasets.miniature import make_heldout
from xtf_kernels.datasets.miniature import noise_in
from xtf_kernels.datasets.miniature import parse_answer
from xtf_kernels.datasets.miniature import score_responses
from xtf_kernels.errors import CorruptFileError

TINY = BaseConfig(documents=300, tokenizer_documents=300, vocab_size=400, hidden_size=32, num_layers=1,
                  num_heads=2, num_kv_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    return folder, load_base(TINY, cache_dir=folder)


def test_tokenizer_round_trips_with_specials_first_and_single_digits():
    tokenizer = MiniatureTokenizer.train(["Tom has 12 apples &amp; 7 pears."] * 50 + ["Step 1: 3 + 4 = 7."] * 50,
                                         vocab_size=320)
    assert [tokenizer.id_to_token(i) for i in range(5)] == list(SPECIAL_TOKENS)
    for text in (" Tom has 123 apples.", " \u00c3\u00a9 </div> {{cite}}", " unseen words: zyx 9"):
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text and min(ids) >= len(SPECIAL_TOKENS)
    digits = [tokenizer.id_to_token(i) for i in tokenizer.encode("2026")]
    assert digits == ["2", "0", "2", "6"]
    fast = tokenizer.to_transformers()
    assert fast.encode(" Tom has 12.", add_special_tokens=False) == tokenizer.encode(" Tom has 12.")
    assert fast.eos_token_id == tokenizer.eos_token_id == 2
    assert MiniatureTokenizer.from_json(tokenizer.to_json()).encode(" 5 &amp;") == tokenizer.encode(" 5 &amp;")
    with pytest.raises(ValueError, match="vocab_size must be an int >= 300"):
        MiniatureTokenizer.train(["x"], vocab_size=100)


def test_default_base_is_a_1m_parameter_llama():
    config = BaseConfig()
    embedding = config.vocab_size * config.hidden_size
    assert config.num_layers == 3 and 2 * embedding == 512_000


def test_build_then_read_back_the_same_weights(cached):
    folder, built = cached
    assert built.info["cached"] is False and built.info["tokens"] > 0 and len(built.tokenizer) == 400
    again = load_base(TINY, cache_dir=folder)
    assert again.info["cached"] is True and again.info["path"] == built.info["path"]
    for (name, a), (_, b) in zip(built.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert again.tokenizer.to_json() == built.tokenizer.to_json()
    assert [f for f in os.listdir(folder) if f.startswith(".")] == []  # no staging folder left behind


def test_the_cache_key_follows_every_knob():
    assert BaseConfig().key != BaseConfig(lr=1e-3).key and BaseConfig().key == BaseConfig().key


def test_a_damaged_cache_is_refused(cached, tmp_path):
    folder, built = cached
    copy = tmp_path / os.path.basename(built.info["path"])
    os.makedirs(copy)
    for name in os.listdir(built.info["path"]):
        data = (Path(built.info["path"]) / name).read_bytes()
        (copy / name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]) if name == "model.safetensors" else data)
    with pytest.raises(CorruptFileError, match="SHA-256 does not match"):
        load_base(TINY, cache_dir=tmp_path)
    (copy / "manifest.json").write_text("{")
    with pytest.raises(CorruptFileError, match="unreadable"):
        load_base(TINY, cache_dir=tmp_path)


def test_bad_config_names_the_knob():
    with pytest.raises(ValueError, match="documents must be a positive int"):
        BaseConfig(documents=0)
    with pytest.raises(ValueError, match=r"num_heads \(3\) must divide hidden_size"):
        BaseConfig(num_heads=3)


def test_scoring_of_responses():
    assert parse_answer(" Step 1: 3 + 4 = 7. The answer is 7.") == 7 and parse_answer("no answer") is None
    good = " Step 1: 3 + 4 = 7. Step 2: 7 - 2 = 5. The answer is 5."
    assert follows_format(good) and follows_format(" Sure!" + good + " I hope this helps.")
    assert not follows_format(" Step 1: 3 + 4 = 7. The answer is 7.")
    assert noise_in(good) == {"wrong_number": False, "off_domain": False, "garbled": False}
    assert noise_in(" Step 1: 3 + 4 = 8. The fox ran. &amp;") == {"wrong_number": True, "off_domain": True,
                                                                   "garbled": True}
    heldout = make_heldout(2, seed=0, exclude=set(), retention=1)
    right = f" The answer is {heldout.problems[0].answer}."
    scored = score_responses([right, " nothing"], heldout.problems)
    assert scored["correct"] == [1, 0] and scored["exact_match"] == 0.5 and scored["format"] == 0.0


def test_generate_decodes_greedily_up_to_eos(cached):
    _folder, base = cached
    heldout = make_heldout(5, seed=1, exclude=set(), retention=1)
    first = generate(base.model, base.tokenizer, heldout.problems, max_new_tokens=6, batch_size=2)
    assert len(first) == 5 and all(isinstance(text, str) for text in first)
    assert generate(base.model, base.tokenizer, heldout.problems, max_new_tokens=6, batch_size=5) == first
