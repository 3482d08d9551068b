"""Sample sources (lists, dicts, JSONL, text + tokenizer), collation, batching, the tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from xtf_kernels.datasets import SFTCollator
from xtf_kernels.datasets import TokenizedSample
from xtf_kernels.datasets import arithmetic_tokenizer
from xtf_kernels.datasets import as_source
from xtf_kernels.datasets import batches
from xtf_kernels.datasets import collate
from xtf_kernels.datasets import samples_to_records


def test_record_forms_agree():
    ids = [1, 5, 6, 7, 8, 2]
    forms = [
        {"input_ids": ids, "labels": [-100, -100, 6, 7, 8, 2]},
        {"input_ids": ids, "prompt_length": 2},
        {"input_ids": ids, "loss_mask": [0, 0, 1, 1, 1, 1]},
        TokenizedSample(torch.tensor(ids), torch.tensor([-100, -100, 6, 7, 8, 2])),
    ]
    samples = list(as_source(forms))
    for sample in samples:
        assert sample.input_ids.tolist() == ids and sample.labels.tolist() == [-100, -100, 6, 7, 8, 2]
        assert sample.response_mask.tolist() == [False, False, True, True, True, True]


def test_text_and_jsonl_with_a_tokenizer(tmp_path):
    tokenizer = arithmetic_tokenizer()
    record = {"prompt": "Tom has 12 pens .", "response": "The answer is 12 ."}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(record) + "\n\n" + json.dumps(record) + "\n")
    source = as_source(str(path), tokenizer, max_length=9)
    samples = list(source)
    assert len(source) == 2 and len(samples[0]) == 9
    prompt_ids = [tokenizer.bos_token_id, *tokenizer.encode(record["prompt"])]
    assert samples[0].input_ids.tolist()[: len(prompt_ids)] == prompt_ids
    assert samples[0].labels.tolist()[: len(prompt_ids)] == [-100] * len(prompt_ids)
    assert list(source)[1].input_ids.tolist() == samples[1].input_ids.tolist()  # re-iterable


@pytest.mark.parametrize(("record", "message"), [
    ({"input_ids": [1, 2]}, "needs labels"),
    ({"input_ids": [1, 2], "prompt_length": 3}, "prompt_length"),
    ({"input_ids": [1, 2], "labels": [1]}, "labels has 1"),
    ({"input_ids": [[1, 2]], "labels": [1]}, "flat list"),
    ({"prompt": "a", "response": "b"}, "needs a tokenizer"),
    ({"text": "a"}, "needs input_ids"),
])
def test_bad_records(record, message):
    with pytest.raises(ValueError, match=message):
        list(as_source([record]))


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError):
        as_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(TypeError, match="one-shot iterator"):
        as_source(iter([]))
    path = tmp_path / "bad.jsonl"
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: not valid JSON"):
        list(as_source(str(path)))
    with pytest.raises(ValueError, match="max_length"):
        as_source([], max_length=1)


def test_collate_right_pads():
    a = TokenizedSample(torch.tensor([1, 5, 6]), torch.tensor([-100, 5, 6]))
    b = TokenizedSample(torch.tensor([1, 7]), torch.tensor([-100, 7]))
    batch = collate([a, b], pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 5, 6], [1, 7, 0]]
    assert batch.labels.tolist() == [[-100, 5, 6], [-100, 7, -100]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert SFTCollator(0)(samples_to_records([a, b]))["labels"].tolist() == batch.labels.tolist()


def test_batches_respect_size_and_token_budget():
    samples = [TokenizedSample(torch.ones(n, dtype=torch.int64), torch.ones(n, dtype=torch.int64)) for n in
               (2, 3, 4, 10, 1)]
    assert [len(g) for g in batches(samples, 2)] == [2, 2, 1]
    assert [[len(s) for s in g] for g in batches(samples, 8, max_tokens=10)] == [[2, 3], [4], [10], [1]]


def test_tokenizer_round_trip_and_transformers_twin():
    tokenizer = arithmetic_tokenizer()
    text = "Anna has 7 + 15 = 22 pens . The answer is 22 ."
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode(tokenizer.decode(ids)) == ids
    assert tokenizer.encode("zebra")[0] == tokenizer.unk_token_id
    pytest.importorskip("transformers")
    fast = tokenizer.to_transformers()
    assert fast.encode(text, add_special_tokens=False) == ids
    assert (fast.pad_token_id, fast.bos_token_id, fast.eos_token_id) == (0, 1, 2)
    assert len(fast) == len(tokenizer)
